//! The ops HTTP port's bounds against slowloris: header-read timeout and connection bound. They
//! do not depend on the store, so they run once, on the embedded one.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{
    app::{Store, spawn_app_with},
    http_get,
};

/// Whether the server closes `stream` within `within` (EOF or reset), reading what it sends.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = spawn_app_with(Store::Sqlite, |settings| {
        settings.ops_header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut slow = connect(app.ops_addr).await;
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    assert!(closed_within(&mut slow, Duration::from_secs(3)).await);
    // An idle kept-alive connection is closed the same way.
    let mut idle = connect(app.ops_addr).await;
    assert!(closed_within(&mut idle, Duration::from_secs(3)).await);
    assert_eq!(http_get(app.ops_addr, "/metrics").await.0, 200);
}

#[tokio::test]
async fn past_the_connection_bound_a_connection_is_closed_at_once_until_one_ends() {
    let app = spawn_app_with(Store::Sqlite, |settings| {
        settings.ops_max_connections = 2;
        settings.ops_header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let mut held = vec![connect(app.ops_addr).await, connect(app.ops_addr).await];
    // Both are accepted (and their permits taken) before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut third = connect(app.ops_addr).await;
    assert!(closed_within(&mut third, Duration::from_secs(1)).await);
    // The held ones are still open.
    assert!(!closed_within(&mut held[0], Duration::from_millis(200)).await);

    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(http_get(app.ops_addr, "/metrics").await.0, 200);
}
