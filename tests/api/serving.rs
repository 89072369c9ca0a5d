use std::time::Duration;

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use crate::{
    helpers::Direct,
    support::{
        app::{Store, spawn_app},
        channel,
    },
};

async fn health_reports_serving_for_the_server_and_the_service(store: Store) {
    let app = spawn_app(store).await;
    let mut health = HealthClient::new(channel(app.addr).await);
    for service in ["", "sessiond.v1.SessionService"] {
        let mut status = ServingStatus::Unknown;
        // SERVING follows the migrations, which run in the background at start.
        for _ in 0..50 {
            let request = HealthCheckRequest {
                service: service.into(),
            };
            status = health
                .check(request)
                .await
                .expect("known service")
                .into_inner()
                .status();
            if status == ServingStatus::Serving {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }
}

/// A rollback starts the previous release on a database that a newer release has migrated
/// further: the migration this build does not know must not stop it.
async fn a_database_a_newer_release_migrated_still_migrates(store: Store) {
    let app = spawn_app(store).await;
    let direct = Direct::of(&app, store);
    direct.store().migrate().await.expect("migrates");
    direct
        .execute(match store {
            Store::Postgres => {
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES (99991231000000, 'from a newer release', true, decode('00', 'hex'), 0)"
            }
            Store::Sqlite => {
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES (99991231000000, 'from a newer release', true, X'00', 0)"
            }
        })
        .await;
    direct
        .store()
        .migrate()
        .await
        .expect("a newer release's migration is left alone");
}

async fn reflection_v1_lists_the_services(store: Store) {
    let app = spawn_app(store).await;
    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(channel(app.addr).await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a message")
        .expect("not empty");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<_> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert!(
        names.contains(&"sessiond.v1.SessionService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"envoy.service.auth.v3.Authorization".to_owned()),
        "grpcurl can call Envoy's Check: {names:?}"
    );
}

async fn reflection_v1alpha_describes_the_session_service(store: Store) {
    let app = spawn_app(store).await;
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel(app.addr).await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "sessiond.v1.SessionService".into(),
            ),
        ),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a message")
        .expect("not empty");
    assert!(
        matches!(
            response.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref files))
                if !files.file_descriptor_proto.is_empty()
        ),
        "{response:?}"
    );
}

on_every_store!(
    health_reports_serving_for_the_server_and_the_service,
    a_database_a_newer_release_migrated_still_migrates,
    reflection_v1_lists_the_services,
    reflection_v1alpha_describes_the_session_service,
);
