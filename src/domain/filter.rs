//! Which sessions RevokeSessions signs out.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use super::{Metadata, UserId};

/// Conditions on a session, all of which must hold. Never empty: revoking every session is not
/// one missing field away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    pub user_id: Option<UserId>,
    pub device_id: Option<String>,
    pub created_before: Option<DateTime<Utc>>,
    pub created_after: Option<DateTime<Utc>>,
    pub last_seen_before: Option<DateTime<Utc>>,
    /// The session's address is in this network (a single address is a /32 or /128).
    pub network: Option<IpNet>,
    /// The session's metadata holds this key with this value.
    pub metadata: Option<(String, String)>,
}

impl SessionFilter {
    /// Whether no condition is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether a session with this address and metadata meets the conditions the store does not
    /// judge itself (the network and the metadata: neither can be written once for both
    /// databases).
    pub fn admits(&self, ip_address: Option<IpAddr>, metadata: &Metadata) -> bool {
        let in_network = self
            .network
            .is_none_or(|network| ip_address.is_some_and(|ip| network.contains(&ip)));
        let has_entry = self.metadata.as_ref().is_none_or(|(key, value)| {
            metadata
                .entries()
                .get(key)
                .is_some_and(|held| held == value)
        });
        in_network && has_entry
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn metadata(pairs: &[(&str, &str)]) -> Metadata {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        Metadata::try_from(map).expect("valid metadata")
    }

    #[test]
    fn a_network_admits_only_its_addresses() {
        let filter = SessionFilter {
            network: Some("203.0.113.0/24".parse().expect("a network")),
            ..SessionFilter::default()
        };
        let none = metadata(&[]);
        assert!(filter.admits(Some("203.0.113.7".parse().expect("ip")), &none));
        assert!(!filter.admits(Some("203.0.114.7".parse().expect("ip")), &none));
        assert!(!filter.admits(None, &none));
        assert!(!filter.admits(Some("2001:db8::1".parse().expect("ip")), &none));
    }

    #[test]
    fn metadata_must_hold_the_key_with_that_value() {
        let filter = SessionFilter {
            metadata: Some(("tenant".into(), "acme".into())),
            ..SessionFilter::default()
        };
        assert!(filter.admits(None, &metadata(&[("tenant", "acme"), ("x", "y")])));
        assert!(!filter.admits(None, &metadata(&[("tenant", "other")])));
        assert!(!filter.admits(None, &metadata(&[])));
    }

    #[test]
    fn a_filter_with_no_condition_is_empty() {
        assert!(SessionFilter::default().is_empty());
        let filter = SessionFilter {
            device_id: Some("phone".into()),
            ..SessionFilter::default()
        };
        assert!(!filter.is_empty());
        assert!(filter.admits(None, &metadata(&[])));
    }
}
