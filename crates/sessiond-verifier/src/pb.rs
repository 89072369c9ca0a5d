//! Code generated from sessiond's `proto/` by `build.rs`: the `SessionService` client (and, in
//! this crate's tests only, its server).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("sessiond.v1");

/// `Debug` of the messages that carry a token: every field but the token, so that a request or
/// an answer printed to a log or a panic message never shows one.
mod redacted {
    use std::fmt;

    const REDACTED: &str = "[redacted]";

    impl fmt::Debug for super::TokenPair {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("TokenPair")
                .field("access_token", &REDACTED)
                .field("access_token_expires_at", &self.access_token_expires_at)
                .field("refresh_token", &REDACTED)
                .field("refresh_token_expires_at", &self.refresh_token_expires_at)
                .finish()
        }
    }

    impl fmt::Debug for super::ValidateRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ValidateRequest")
                .field("access_token", &REDACTED)
                .finish()
        }
    }

    impl fmt::Debug for super::RefreshRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RefreshRequest")
                .field("refresh_token", &REDACTED)
                .finish()
        }
    }

    #[cfg(test)]
    mod tests {
        use crate::pb;

        #[test]
        fn messages_that_carry_a_token_print_without_it() {
            let printed = format!(
                "{:?} {:?}",
                pb::ValidateRequest {
                    access_token: "eyJ.secret.jwt".into()
                },
                pb::TokenPair {
                    access_token: "eyJ.secret.jwt".into(),
                    refresh_token: "sdrt_secret".into(),
                    ..Default::default()
                }
            );
            assert!(!printed.contains("secret"), "{printed}");
        }
    }
}
