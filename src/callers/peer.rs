//! The names in a client certificate that the callers file can match: its URI SANs (SPIFFE ids)
//! and DNS SANs. Read once per connection, when the TLS handshake is done.

use x509_parser::{extensions::GeneralName, prelude::FromDer};

/// The subject alternative names of a verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    uris: Vec<String>,
    dns_names: Vec<String>,
}

impl PeerIdentity {
    /// The names of the end-entity certificate `der` (already verified by the TLS handshake).
    pub fn from_certificate(der: &[u8]) -> anyhow::Result<Self> {
        let (_, certificate) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|error| anyhow::anyhow!("cannot parse the client certificate: {error}"))?;
        let mut identity = Self::default();
        let names = certificate
            .subject_alternative_name()
            .map_err(|error| anyhow::anyhow!("bad subjectAltName: {error}"))?;
        for name in names.iter().flat_map(|san| &san.value.general_names) {
            match name {
                GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                // DNS names compare without case (RFC 4343); the file's are lowered when read.
                GeneralName::DNSName(dns) => identity.dns_names.push(dns.to_ascii_lowercase()),
                _ => {}
            }
        }
        Ok(identity)
    }

    /// An identity with these names, as if read from a certificate.
    pub fn from_names(uris: Vec<String>, dns_names: Vec<String>) -> Self {
        Self { uris, dns_names }
    }

    /// The URI SANs that are SPIFFE ids.
    pub fn spiffe_ids(&self) -> impl Iterator<Item = &str> {
        self.uris
            .iter()
            .map(String::as_str)
            .filter(|uri| uri.starts_with("spiffe://"))
    }

    pub fn dns_names(&self) -> impl Iterator<Item = &str> {
        self.dns_names.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sans_of_a_certificate_are_read() {
        let mut params =
            rcgen::CertificateParams::new(vec!["Login.Auth.svc".to_owned()]).expect("params");
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://cluster.local/ns/edge/sa/gateway")
                .expect("ia5"),
        ));
        let key = rcgen::KeyPair::generate().expect("key");
        let certificate = params.self_signed(&key).expect("self-signed");
        let identity = PeerIdentity::from_certificate(certificate.der()).expect("parses");
        assert_eq!(
            identity.spiffe_ids().collect::<Vec<_>>(),
            ["spiffe://cluster.local/ns/edge/sa/gateway"]
        );
        assert_eq!(identity.dns_names().collect::<Vec<_>>(), ["login.auth.svc"]);
    }
}
