//! Parsed domain values. Each type can only hold a valid value (parse, don't validate), so the
//! layers below `api` never check input again.

mod device;
mod metadata;
mod reason;
mod session;
mod session_id;
mod user_id;

pub use device::Device;
pub use metadata::Metadata;
pub use reason::RevokeReason;
pub use session::{Session, SessionState};
pub use session_id::SessionId;
pub use user_id::UserId;

/// Checks that `text` is at most `max_bytes` long and holds no control characters, which would
/// corrupt logs and terminals. Returns the description of the violation.
fn check_text(text: &str, max_bytes: usize) -> Result<(), String> {
    if text.len() > max_bytes {
        return Err(format!(
            "must be at most {max_bytes} bytes, got {}",
            text.len()
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}
