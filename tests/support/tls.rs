//! A throwaway PKI for the TLS tests: a CA, the server certificate it signs, and client
//! certificates with the SANs a callers file matches; and gRPC channels over TLS.

use std::{net::SocketAddr, path::PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType,
    string::Ia5String,
};
use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Its own subject: OpenSSL (redis-server, redis-cli) takes a leaf whose subject is its
        // issuer's, as rcgen's default would make it, for a self-signed certificate.
        params
            .distinguished_name
            .push(DnType::CommonName, "sessiond test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The server's certificate: `localhost` and 127.0.0.1.
    pub fn server(&self) -> Pair {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        self.sign(params)
    }

    /// A client certificate whose URI SAN is `spiffe_id`.
    pub fn client(&self, spiffe_id: &str) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI(Ia5String::try_from(spiffe_id).unwrap()));
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Pair {
        params
            .distinguished_name
            .push(DnType::CommonName, "sessiond test peer");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// The files sessiond reads its TLS from, in a folder of their own; replaced whole (written
/// aside, then renamed), as a Secret update does.
pub struct TlsFiles {
    dir: TempDir,
}

impl TlsFiles {
    pub fn new(server: &Pair, client_ca: Option<&Ca>) -> Self {
        let files = Self {
            dir: TempDir::new().unwrap(),
        };
        files.replace(server);
        if let Some(ca) = client_ca {
            files.write("client-ca.pem", &ca.pem());
        }
        files
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    pub fn client_ca(&self) -> PathBuf {
        self.dir.path().join("client-ca.pem")
    }

    /// A new server pair, the key first (a reload between the two sees a mismatch and keeps
    /// the pair in use).
    pub fn replace(&self, server: &Pair) {
        self.write("tls.key", &server.key);
        self.write("tls.crt", &server.cert);
    }

    pub fn write(&self, name: &str, text: &str) {
        let aside = self.dir.path().join(format!("{name}.new"));
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(aside, self.dir.path().join(name)).unwrap();
    }
}

/// A channel to `addr` over TLS that trusts the CA `trusted` (PEM), presenting `identity` if any.
pub async fn tls_channel(
    addr: SocketAddr,
    trusted: &str,
    identity: Option<&Pair>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(trusted))
        .domain_name("localhost");
    if let Some(pair) = identity {
        tls = tls.identity(Identity::from_pem(&pair.cert, &pair.key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// What `Health/Check` of the whole server answers over `channel`.
pub async fn health(channel: Channel) -> Result<ServingStatus, tonic::Status> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?;
    Ok(response.into_inner().status())
}

/// Whether a client trusting `trusted` (a CA's PEM) is served health over TLS at `addr`.
pub async fn serves(addr: SocketAddr, trusted: &str) -> bool {
    match tls_channel(addr, trusted, None).await {
        Ok(channel) => health(channel).await.is_ok(),
        Err(_) => false,
    }
}
