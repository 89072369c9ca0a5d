use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// A small string map the caller attaches to a session and gets back unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    /// The most entries a session may carry.
    pub const MAX_ENTRIES: usize = 16;
    /// The longest accepted key, in bytes.
    pub const MAX_KEY_BYTES: usize = 64;
    /// The longest accepted value, in bytes.
    pub const MAX_VALUE_BYTES: usize = 256;

    /// The entries, sorted by key.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl TryFrom<HashMap<String, String>> for Metadata {
    type Error = String;

    fn try_from(map: HashMap<String, String>) -> Result<Self, Self::Error> {
        if map.len() > Self::MAX_ENTRIES {
            return Err(format!(
                "must have at most {} entries, got {}",
                Self::MAX_ENTRIES,
                map.len()
            ));
        }
        for (key, value) in &map {
            if key.is_empty() {
                return Err("keys must not be empty".into());
            }
            super::check_text(key, Self::MAX_KEY_BYTES).map_err(|d| format!("key {key:?} {d}"))?;
            super::check_text(value, Self::MAX_VALUE_BYTES)
                .map_err(|d| format!("value of {key:?} {d}"))?;
        }
        Ok(Self(map.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: impl IntoIterator<Item = (String, String)>) -> HashMap<String, String> {
        entries.into_iter().collect()
    }

    #[test]
    fn a_small_map_is_kept_as_given() {
        let metadata = Metadata::try_from(map([("app".into(), "web".into())])).expect("valid");
        assert_eq!(
            metadata.entries().get("app").map(String::as_str),
            Some("web")
        );
    }

    #[test]
    fn too_many_entries_are_refused() {
        let entries = (0..=Metadata::MAX_ENTRIES).map(|i| (format!("k{i}"), String::new()));
        assert!(Metadata::try_from(map(entries)).is_err());
    }

    #[test]
    fn oversized_keys_values_and_empty_keys_are_refused() {
        assert!(Metadata::try_from(map([("k".repeat(65), String::new())])).is_err());
        assert!(Metadata::try_from(map([("k".into(), "v".repeat(257))])).is_err());
        assert!(Metadata::try_from(map([(String::new(), "v".into())])).is_err());
    }
}
