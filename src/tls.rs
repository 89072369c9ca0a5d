//! TLS on the gRPC port: the server's certificate and the client CA, reread like the signing keys
//! (so a cert-manager renewal needs no restart), and the stream of accepted connections that the
//! gRPC server serves, each carrying the names of its verified client certificate.
//!
//! tonic's own TLS cannot swap its certificate while serving, so the handshake is done here, with
//! rustls: each new connection takes the configuration in force when it arrives; connections
//! already open keep theirs.
//!
//! Also the client side's trust in a private CA (for `rediss://`).

use std::{
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    task::JoinSet,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ClientConfig, RootCertStore, ServerConfig,
        crypto::{CryptoProvider, ring},
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
    server::TlsStream,
};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpIncoming};

use crate::{
    callers::{ConnectInfo, PeerIdentity},
    token::read_secret_file,
};

/// How long a client may take to finish its handshake before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes under way at once. Past it no connection is accepted until one finishes, so a
/// flood of clients that never finish theirs holds a bounded amount of memory (the rest wait in
/// the kernel's accept queue).
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// The files TLS is configured from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM bundle) that client certificates must chain to; `None`: no client
    /// certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// The TLS configuration in force, and the files it is reread from.
pub struct ServerTls {
    files: TlsFiles,
    config: ArcSwap<ServerConfig>,
}

impl ServerTls {
    /// Reads `files`; the error names the file at fault.
    pub fn load(files: TlsFiles) -> anyhow::Result<Self> {
        let config = server_config(&files)?;
        Ok(Self {
            files,
            config: ArcSwap::from_pointee(config),
        })
    }

    /// Rereads the files. On any error the configuration in force stays, and the error says why.
    pub fn reload(&self) -> anyhow::Result<()> {
        self.config.store(Arc::new(server_config(&self.files)?));
        Ok(())
    }

    /// The connections accepted on `incoming`, once their handshake is done. A handshake that
    /// fails or takes too long drops its connection; the stream goes on.
    pub fn accept(self: Arc<Self>, incoming: TcpIncoming) -> TlsIncoming {
        TlsIncoming {
            tls: self,
            incoming,
            handshakes: JoinSet::new(),
        }
    }
}

fn server_config(files: &TlsFiles) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(ring::default_provider());
    let chain = read_certificates(&files.cert, "SESSIOND_TLS_CERT_FILE")?;
    let key = read_secret_file(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key).with_context(|| {
        format!(
            "SESSIOND_TLS_KEY_FILE {} holds no PEM private key",
            files.key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("SESSIOND_TLS_CERT_FILE and SESSIOND_TLS_KEY_FILE do not make a pair")?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> anyhow::Result<Arc<dyn tokio_rustls::rustls::server::danger::ClientCertVerifier>> {
    let roots = root_store(path, "SESSIOND_TLS_CLIENT_CA_FILE")?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .with_context(|| format!("SESSIOND_TLS_CLIENT_CA_FILE {}", path.display()))
}

/// A TLS client configuration that trusts only the CAs in `path` (PEM bundle, named `setting` in
/// errors), and presents no certificate.
pub fn client_config_trusting(path: &Path, setting: &str) -> anyhow::Result<ClientConfig> {
    Ok(
        ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(root_store(path, setting)?)
            .with_no_client_auth(),
    )
}

/// The CA certificates of `path`.
fn root_store(path: &Path, setting: &str) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path, setting)? {
        roots
            .add(certificate)
            .with_context(|| format!("{setting} {}: a certificate is not a CA", path.display()))?;
    }
    Ok(roots)
}

/// The PEM certificates of `path`, at least one; the error names `setting`.
fn read_certificates(path: &Path, setting: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{setting} {}: cannot read PEM certificates", path.display()))?;
    anyhow::ensure!(
        !certificates.is_empty(),
        "{setting} {} holds no PEM certificate",
        path.display()
    );
    Ok(certificates)
}

/// The stream of connections whose handshake is done; see [`ServerTls::accept`].
pub struct TlsIncoming {
    tls: Arc<ServerTls>,
    incoming: TcpIncoming,
    handshakes: JoinSet<Option<TlsConnection>>,
}

impl Stream for TlsIncoming {
    type Item = io::Result<TlsConnection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Take in new connections while there is room for their handshakes.
        while this.handshakes.len() < MAX_PENDING_HANDSHAKES {
            match Pin::new(&mut this.incoming).poll_next(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    let acceptor = TlsAcceptor::from(this.tls.config.load_full());
                    this.handshakes.spawn(handshake(acceptor, stream));
                }
                // tonic logs it and asks again.
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                // The listener is closed: no more connections.
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(connection)))) => {
                    return Poll::Ready(Some(Ok(connection)));
                }
                // A failed handshake, already logged, or a handshake task that panicked.
                Poll::Ready(Some(_)) => continue,
                // No handshake under way: `incoming` has registered the waker.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Completes the handshake of `stream`, or gives up on it (logged at debug: a client that cannot
/// connect sees why, and a scanner must not fill the logs).
async fn handshake(acceptor: TlsAcceptor, stream: TcpStream) -> Option<TlsConnection> {
    let remote_addr = stream.peer_addr().ok();
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(remote_addr = ?remote_addr, "TLS handshake failed: {error}");
            return None;
        }
        Err(_) => {
            tracing::debug!(remote_addr = ?remote_addr, "TLS handshake timed out");
            return None;
        }
    };
    // rustls has verified the chain; the leaf's names are what the callers file matches.
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| match PeerIdentity::from_certificate(leaf) {
            Ok(identity) => Some(Arc::new(identity)),
            Err(error) => {
                tracing::warn!(remote_addr = ?remote_addr, "client certificate names unreadable; the connection carries no identity: {error:#}");
                None
            }
        });
    Some(TlsConnection {
        stream,
        info: ConnectInfo { remote_addr, peer },
    })
}

/// A connection over TLS, and what it tells of its peer.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: ConnectInfo,
}

impl Connected for TlsConnection {
    type ConnectInfo = ConnectInfo;

    fn connect_info(&self) -> ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
