//! TLS to Postgres: with `sslmode=verify-full` and `sslrootcert` in `SESSIOND_DATABASE_URL`,
//! sessiond works over a Postgres server (one this test owns) that takes TLS connections only, and
//! refuses one whose certificate does not chain to the trusted CA.

// Tests may panic on a broken expectation; that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use sessiond::api::pb::TokenStatus;
use sqlx::{Connection, PgConnection};
use support::{
    app::{spawn, test_settings},
    postgres_server::PostgresServer,
    tls::Ca,
};
use tempfile::TempDir;
use tonic::Code;

/// A Postgres server whose certificate `ca` signed, and whose `pg_hba.conf` lets in TLS
/// connections only.
fn tls_only_postgres(ca: &Ca) -> PostgresServer {
    let mut postgres = PostgresServer::init();
    let pair = ca.server();
    let cert = postgres.write_private_file("server.crt", &pair.cert);
    let key = postgres.write_private_file("server.key", &pair.key);
    postgres.append_conf(&format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
        cert.display(),
        key.display()
    ));
    postgres.set_hba("local all all trust\nhostssl all all 127.0.0.1/32 trust\n");
    postgres.start();
    postgres
}

/// The URL of `postgres` with `sslmode=verify-full`, trusting the CA PEM file `root`.
fn verify_full_url(postgres: &PostgresServer, root: &std::path::Path) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        postgres.port(),
        root.display()
    )
}

/// `ca`'s certificate in a file of its own.
fn ca_file(ca: &Ca) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("root.crt");
    std::fs::write(&path, ca.pem()).unwrap();
    (dir, path)
}

#[tokio::test]
async fn verify_full_serves_sessions_over_tls_to_a_server_that_takes_nothing_else() {
    let ca = Ca::new();
    let postgres = tls_only_postgres(&ca);
    let (_dir, root) = ca_file(&ca);

    let plaintext = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
        postgres.port()
    );
    assert!(
        PgConnection::connect(&plaintext).await.is_err(),
        "the server let a plaintext connection in: this test would prove nothing"
    );

    let app = spawn(test_settings(&verify_full_url(&postgres, &root)), None).await;
    let created = app.create("vera", "laptop").await;
    let access_token = created.tokens.unwrap().access_token;
    assert_eq!(app.status_of(&access_token).await, TokenStatus::Valid);
}

#[tokio::test]
async fn verify_full_refuses_a_server_certificate_of_another_ca() {
    let postgres = tls_only_postgres(&Ca::new());
    let (_dir, root) = ca_file(&Ca::new());

    let app = spawn(test_settings(&verify_full_url(&postgres, &root)), None).await;
    let refused = app
        .try_create("vera", "laptop")
        .await
        .expect_err("the store is not trusted, so not reached");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
}
