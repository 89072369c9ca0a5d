use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The device a session runs on. Every part is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Caller-chosen stable id; `None` is an unknown device, which never replaces another session.
    pub device_id: Option<String>,
    /// Human-readable name.
    pub name: String,
    /// The client's User-Agent.
    pub user_agent: String,
    /// The client's address.
    pub ip_address: Option<IpAddr>,
}

impl Device {
    /// The longest accepted device id and name, in bytes.
    pub const MAX_ID_BYTES: usize = 128;
    /// The longest accepted user agent, in bytes.
    pub const MAX_USER_AGENT_BYTES: usize = 512;

    /// Parses the request's device fields; empty strings mean "not given".
    pub fn parse(
        device_id: String,
        name: String,
        user_agent: String,
        ip_address: &str,
    ) -> Result<Self, Error> {
        let checked = |field, text: &str, max| {
            super::check_text(text, max).map_err(|d| Error::invalid(field, d))
        };
        checked("device.device_id", &device_id, Self::MAX_ID_BYTES)?;
        checked("device.name", &name, Self::MAX_ID_BYTES)?;
        checked("device.user_agent", &user_agent, Self::MAX_USER_AGENT_BYTES)?;
        let ip_address = match ip_address {
            "" => None,
            text => Some(text.parse().map_err(|_| {
                Error::invalid("device.ip_address", "must be an IPv4 or IPv6 address")
            })?),
        };
        Ok(Self {
            device_id: Some(device_id).filter(|id| !id.is_empty()),
            name,
            user_agent,
            ip_address,
        })
    }
}

impl Device {
    /// The device with its address cut to its network: an IPv4 address to its /24, an IPv6
    /// address to its /48. What is left still says where a sign-in came from (a country, a
    /// provider) without naming the subscriber.
    pub fn with_truncated_ip(mut self) -> Self {
        self.ip_address = self.ip_address.map(|ip| match ip.to_canonical() {
            IpAddr::V4(v4) => Ipv4Addr::from(u32::from(v4) & !0xff).into(),
            IpAddr::V6(v6) => Ipv6Addr::from(u128::from(v6) & !((1_u128 << 80) - 1)).into(),
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_address_keeps_only_its_network() {
        let truncated = |ip: &str| {
            Device::parse(String::new(), String::new(), String::new(), ip)
                .expect("valid")
                .with_truncated_ip()
                .ip_address
                .map(|ip| ip.to_string())
        };
        assert_eq!(truncated("203.0.113.77").as_deref(), Some("203.0.113.0"));
        assert_eq!(
            truncated("2001:db8:1234:5678:9abc::1").as_deref(),
            Some("2001:db8:1234::")
        );
        assert_eq!(
            truncated("::ffff:198.51.100.9").as_deref(),
            Some("198.51.100.0")
        );
        assert_eq!(truncated(""), None);
    }

    fn field_of(result: Result<Device, Error>) -> &'static str {
        match result {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected an invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn empty_fields_mean_not_given() {
        let device = Device::parse(String::new(), String::new(), String::new(), "").expect("valid");
        assert_eq!(device, Device::default());
    }

    #[test]
    fn an_ipv6_address_is_accepted() {
        let device = Device::parse("d1".into(), "phone".into(), "ua".into(), "::1").expect("valid");
        assert_eq!(device.ip_address, Some("::1".parse().expect("literal")));
        assert_eq!(device.device_id.as_deref(), Some("d1"));
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(
            field_of(Device::parse(
                "d".repeat(129),
                String::new(),
                String::new(),
                ""
            )),
            "device.device_id"
        );
        assert_eq!(
            field_of(Device::parse(
                String::new(),
                "\u{7}".into(),
                String::new(),
                ""
            )),
            "device.name"
        );
        assert_eq!(
            field_of(Device::parse(
                String::new(),
                String::new(),
                "u".repeat(513),
                ""
            )),
            "device.user_agent"
        );
        assert_eq!(
            field_of(Device::parse(
                String::new(),
                String::new(),
                String::new(),
                "example.com"
            )),
            "device.ip_address"
        );
    }
}
