//! Parsed domain values. Each type can only hold a valid value (parse, don't validate), so the
//! layers below `api` never check input again.

mod device;
mod filter;
mod metadata;
mod reason;
mod revocation;
mod session;
mod session_id;
mod user_id;

pub use device::Device;
pub use filter::SessionFilter;
pub use metadata::Metadata;
pub use reason::RevokeReason;
pub use revocation::{Cursor, Revocation, Revoked};
pub use session::{Session, SessionState};
pub use session_id::SessionId;
pub use user_id::UserId;

/// Checks that `text` is at most `max_bytes` long and holds no character that would corrupt logs,
/// terminals or what a person reads: control characters, format characters (Cf: bidi overrides
/// that reorder what is shown, zero-width joiners) and the line and paragraph separators (Zl, Zp:
/// U+2028 and U+2029, which break log lines). Returns the description of the violation.
fn check_text(text: &str, max_bytes: usize) -> Result<(), String> {
    if text.len() > max_bytes {
        return Err(format!(
            "must be at most {max_bytes} bytes, got {}",
            text.len()
        ));
    }
    if let Some(bad) = text.chars().find(|&c| unprintable(c)) {
        return Err(format!(
            "must not contain control, format or separator characters (found U+{:04X})",
            u32::from(bad)
        ));
    }
    Ok(())
}

fn unprintable(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    c.is_control()
        || matches!(
            c.general_category(),
            GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
}

#[cfg(test)]
mod tests {
    use super::check_text;

    #[test]
    fn text_that_would_mislead_a_reader_is_refused() {
        for bad in [
            "a\nb",
            "tab\there",
            "bidi \u{202E}evil",
            "zero\u{200B}width",
            "line\u{2028}sep",
            "para\u{2029}sep",
            "bom\u{FEFF}",
        ] {
            assert!(check_text(bad, 100).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ordinary_text_in_any_script_passes() {
        for good in ["alice", "Ünïcödé", "東京のiPhone", "emoji 🙂", "a b"] {
            assert_eq!(check_text(good, 100), Ok(()), "{good:?}");
        }
    }
}
