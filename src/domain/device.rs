use std::net::IpAddr;

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

#[cfg(test)]
mod tests {
    use super::*;

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
