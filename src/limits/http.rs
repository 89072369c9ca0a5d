//! The HTTP ports' bounds (ops, forward-auth), against slowloris and connection floods:
//! `axum::serve` has no knobs for them, so this is its accept loop on hyper's own HTTP/1
//! connection builder.
//!
//! - at most `max_connections` at once: one more is closed as soon as it is accepted;
//! - a request's headers must arrive within `header_read_timeout`; hyper's timer also runs
//!   while a kept-alive connection waits for its next request, so it is the idle timeout too;
//! - a connection lives at most `connection_timeout`, however slowly its client reads: then it is
//!   closed after the request in flight (and cut `CLOSE_GRACE` later if that does not end).

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

/// How long a connection past its time may take to finish its request before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The bounds; see the module doc.
#[derive(Debug, Clone, Copy)]
pub struct HttpBounds {
    /// The port's name in log lines (`ops`, `forward-auth`).
    pub port: &'static str,
    /// The setting of `max_connections`, named when it is reached.
    pub max_connections_setting: &'static str,
    pub max_connections: u32,
    pub header_read_timeout: Duration,
    pub connection_timeout: Duration,
}

/// Serves `app` on `listener` within `bounds` until `stop`; connections then finish their
/// request in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    bounds: HttpBounds,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let connections = Arc::new(Semaphore::new(bounds.max_connections as usize));
    let stopping = CancellationToken::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let socket = match accepted {
            Ok((socket, _)) => socket,
            Err(error) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(%error, port = bounds.port, "an HTTP port cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(
                port = bounds.port,
                "connection refused: {} reached",
                bounds.max_connections_setting
            );
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_read_timeout)
                .serve_connection(TokioIo::new(socket), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = tokio::time::sleep(bounds.connection_timeout) => {}
                () = stopping.cancelled() => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        });
    }
    stopping.cancel();
}
