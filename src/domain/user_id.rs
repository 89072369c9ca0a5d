use std::fmt;

use serde::{Deserialize, Serialize};

/// The caller's opaque id of a user: 1 to 128 bytes of printable text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// The longest accepted user id, in bytes.
    pub const MAX_BYTES: usize = 128;

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.is_empty() {
            return Err("must not be empty".into());
        }
        super::check_text(&value, Self::MAX_BYTES)?;
        Ok(Self(value))
    }
}

impl From<UserId> for String {
    fn from(value: UserId) -> Self {
        value.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::UserId;

    #[test]
    fn an_ordinary_id_is_accepted() {
        assert_eq!(
            UserId::try_from("user-42".to_owned()).map(String::from),
            Ok("user-42".into())
        );
    }

    #[test]
    fn an_empty_id_is_refused() {
        assert!(UserId::try_from(String::new()).is_err());
    }

    #[test]
    fn the_longest_id_is_accepted_and_one_byte_more_is_refused() {
        assert!(UserId::try_from("u".repeat(UserId::MAX_BYTES)).is_ok());
        assert!(UserId::try_from("u".repeat(UserId::MAX_BYTES + 1)).is_err());
    }

    #[test]
    fn control_characters_are_refused() {
        assert!(UserId::try_from("bob\n".to_owned()).is_err());
    }
}
