//! Logs and trace export end to end: the real `sessiond` binary, started as a child process,
//! logs its events, and sends its spans over OTLP/gRPC to a collector this test runs, where they
//! continue the caller's W3C trace.
//!
//! The trace tests run the child on the embedded store (no `SESSIOND_DATABASE_URL`, no
//! `SESSIOND_REDIS_URL`); the log test runs it on a database of its own on the shared Postgres.

// Tests may panic on a broken expectation; that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{net::SocketAddr, process::ExitStatus, time::Duration};

use support::{
    postgres::{database_server_url, fresh_database},
    process::SessiondProcess,
    rpc::create_request,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value,
    trace::v1::{Span, span::SpanKind},
};
use sessiond::api::pb::{self, session_service_client::SessionServiceClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// The caller's trace and span, as a W3C `traceparent` carries them.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn spans_reach_the_collector_in_the_callers_trace() {
    let mut collector = Collector::start().await;
    let sessiond = start_sessiond(collector.addr, "100").await;

    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01");
    let created = create_session(sessiond.addr, &traceparent).await;

    let spans = collector
        .spans_of_trace(
            TRACE_ID,
            &["grpc.request", "rpc.CreateSession", "authority.create"],
        )
        .await
        .unwrap_or_else(|seen| {
            panic!(
                "no complete trace within the deadline; spans seen: {seen:#?}\n{}",
                sessiond.log()
            )
        });

    // The request span continues the caller's span, and the handler's spans nest under it.
    let request = span_named(&spans, "grpc.request");
    assert_eq!(request.span.parent_span_id, hex(CALLER_SPAN_ID));
    assert_eq!(request.span.kind, SpanKind::Server as i32);
    assert_eq!(
        attribute(&request.span, "rpc.service").as_deref(),
        Some("sessiond.v1.SessionService")
    );
    assert_eq!(
        attribute(&request.span, "rpc.method").as_deref(),
        Some("CreateSession")
    );
    assert_eq!(
        attribute(&request.span, "rpc.system").as_deref(),
        Some("grpc")
    );
    // Recorded by the callers layer; open mode attributes every call to `anonymous`.
    assert_eq!(
        attribute(&request.span, "caller").as_deref(),
        Some("anonymous")
    );
    let handler = span_named(&spans, "rpc.CreateSession");
    assert_eq!(handler.span.parent_span_id, request.span.span_id);
    let authority = span_named(&spans, "authority.create");
    assert_eq!(authority.span.parent_span_id, handler.span.span_id);

    for span in &spans {
        assert_eq!(
            span.service_name.as_deref(),
            Some("sessiond-test"),
            "{}",
            span.span.name
        );
    }

    // No token ever appears in a span.
    let tokens = created.tokens.expect("a token pair");
    for span in &spans {
        for value in span
            .span
            .attributes
            .iter()
            .filter_map(|kv| string(kv.value.as_ref()))
        {
            assert!(
                !value.contains(&tokens.access_token) && !value.contains(&tokens.refresh_token),
                "a token leaked into span {}",
                span.span.name
            );
        }
    }

    let status = stop(sessiond).await;
    assert!(status.success(), "sessiond exited with {status}");
}

/// With a batch delay far longer than the test, spans can only arrive through the flush that
/// stopping sessiond does: the telemetry guard must not lose them on exit.
#[tokio::test]
async fn stopping_flushes_the_buffered_spans() {
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    let mut collector = Collector::start().await;
    let sessiond = start_sessiond(collector.addr, "600000").await;

    create_session(sessiond.addr, &format!("00-{TRACE}-b7ad6b7169203331-01")).await;
    let status = stop(sessiond).await;
    assert!(status.success(), "sessiond exited with {status}");

    let spans = collector
        .spans_of_trace(
            TRACE,
            &["grpc.request", "rpc.CreateSession", "authority.create"],
        )
        .await
        .unwrap_or_else(|seen| panic!("the spans were lost on exit; spans seen: {seen:#?}"));
    assert_eq!(
        span_named(&spans, "grpc.request").span.parent_span_id,
        hex("b7ad6b7169203331")
    );
}

/// sqlx asks after every query whether its debug log is on. With per-layer filters, a question
/// answered "no" used to leave stale state behind that dropped the next event on that thread
/// (tokio-rs/tracing#2519): no "session created" line was ever logged, nor the "serving" line
/// that follows the migrations at start. The test runs on Postgres, whose queries run on the
/// caller's thread; the embedded store runs its queries on a thread of its own and never showed it.
#[tokio::test]
async fn events_that_follow_store_queries_are_logged() {
    let sessiond = SessiondProcess::start(&[
        ("SESSIOND_DATABASE_URL", fresh_database().await),
        ("SESSIOND_SHUTDOWN_DRAIN", "100ms".into()),
    ])
    .await;
    sessiond
        .wait_for_log("serving sessiond.v1.SessionService", 1)
        .await;
    for _ in 0..3 {
        create_session(sessiond.addr, &format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01")).await;
    }
    sessiond.wait_for_log("session created", 3).await;
    stop(sessiond).await;
}

/// A store that cannot be used at start is logged with its cause: "internal error" alone (what a
/// caller is told) would leave the operator guessing that the database does not exist.
#[tokio::test]
async fn a_store_that_is_not_ready_is_logged_with_its_cause() {
    let mut url = url::Url::parse(&database_server_url()).unwrap();
    url.set_path(&format!(
        "sessiond_test_missing_{}",
        uuid::Uuid::now_v7().simple()
    ));
    let sessiond = SessiondProcess::spawn(&[("SESSIOND_DATABASE_URL", url.to_string())]);
    sessiond.wait_for_log("the store is not ready", 1).await;
    let log = sessiond.log_text();
    let line = log
        .lines()
        .find(|line| line.contains("the store is not ready"))
        .unwrap();
    assert!(line.contains("does not exist"), "{line}");
}

/// Each mutating call writes one audit line naming caller, method, user and session (each it
/// knows), and code, and no token.
#[tokio::test]
async fn mutating_calls_write_one_audit_line_each_without_tokens() {
    let sessiond = SessiondProcess::start(&[
        ("SESSIOND_LOG_FORMAT", "json".into()),
        ("SESSIOND_SHUTDOWN_DRAIN", "100ms".into()),
    ])
    .await;
    let created =
        create_session(sessiond.addr, &format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01")).await;
    let sid = created.session.expect("session").session_id;
    let tokens = created.tokens.expect("tokens");
    let mut client = sessiond.client().await;
    client
        .validate(pb::ValidateRequest {
            access_token: tokens.access_token.clone(),
        })
        .await
        .unwrap();
    client
        .revoke_session(pb::RevokeSessionRequest {
            session_id: sid.clone(),
            reason: String::new(),
            user_id: String::new(),
        })
        .await
        .unwrap();
    let erased = client
        .delete_user_sessions(pb::DeleteUserSessionsRequest {
            user_id: "user-traced".into(),
        })
        .await
        .unwrap();
    assert_eq!(erased.into_inner().deleted_count, 1);
    sessiond
        .wait_for_log("\"method\":\"DeleteUserSessions\"", 1)
        .await;

    let log = sessiond.log_text();
    let audits: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == "audit")
        .collect();
    let methods: Vec<_> = audits.iter().map(|a| a["method"].clone()).collect();
    assert_eq!(
        methods,
        ["CreateSession", "RevokeSession", "DeleteUserSessions"],
        "Validate is not audited"
    );
    for audit in &audits {
        assert_eq!(audit["caller"], "anonymous");
        assert_eq!(audit["code"], "Ok");
    }
    assert_eq!(audits[0]["session_id"], sid.as_str());
    assert_eq!(audits[1]["session_id"], sid.as_str());
    assert_eq!(audits[0]["user_id"], "user-traced");
    // An erasure names the user, and no session: it erases them all.
    assert_eq!(audits[2]["user_id"], "user-traced");
    assert_eq!(audits[2]["session_id"], "");
    assert!(!log.contains(&tokens.access_token) && !log.contains(&tokens.refresh_token));
    stop(sessiond).await;
}

/// `CreateSession` with the caller's `traceparent` (and a `tracestate`) in the metadata.
async fn create_session(addr: SocketAddr, traceparent: &str) -> pb::CreateSessionResponse {
    let mut client = SessionServiceClient::new(support::channel(addr).await);
    let mut request = Request::new(create_request("user-traced", "phone-1"));
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
        .metadata_mut()
        .insert("tracestate", "vendor=opaque".parse().unwrap());
    client.create_session(request).await.unwrap().into_inner()
}

/// A span as the collector received it, with the service name of its resource.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service_name: Option<String>,
    span: Span,
}

/// An OTLP/gRPC trace receiver on 127.0.0.1:0.
struct Collector {
    addr: SocketAddr,
    received: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    spans: Vec<ReceivedSpan>,
}

struct TraceSink(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for TraceSink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let _ = self.0.send(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sender, received) = mpsc::unbounded_channel();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(TraceSink(sender)))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Self {
            addr,
            received,
            spans: Vec::new(),
        }
    }

    /// The spans of trace `trace_id` once spans with all of `names` have arrived, or after 10 s,
    /// `Err` with every span seen so far.
    async fn spans_of_trace(
        &mut self,
        trace_id: &str,
        names: &[&str],
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        let trace_id = hex(trace_id);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let in_trace: Vec<ReceivedSpan> = self
                .spans
                .iter()
                .filter(|received| received.span.trace_id == trace_id)
                .cloned()
                .collect();
            if names
                .iter()
                .all(|name| in_trace.iter().any(|received| received.span.name == *name))
            {
                return Ok(in_trace);
            }
            match tokio::time::timeout_at(deadline, self.received.recv()).await {
                Ok(Some(request)) => self.add(request),
                Ok(None) | Err(_) => return Err(self.spans.clone()),
            }
        }
    }

    fn add(&mut self, request: ExportTraceServiceRequest) {
        for resource_spans in request.resource_spans {
            let service_name = resource_spans.resource.as_ref().and_then(|resource| {
                resource
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| string(kv.value.as_ref()))
            });
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    self.spans.push(ReceivedSpan {
                        service_name: service_name.clone(),
                        span,
                    });
                }
            }
        }
    }
}

/// Starts the real sessiond binary exporting to `collector` with batch delay
/// `schedule_delay_ms`, and waits until it reports SERVING; killed if the test ends without
/// stopping it.
async fn start_sessiond(collector: SocketAddr, schedule_delay_ms: &str) -> SessiondProcess {
    SessiondProcess::start(&[
        // Nothing to drain from: stop as soon as SIGTERM arrives.
        ("SESSIOND_SHUTDOWN_DRAIN", "100ms".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
        ("OTEL_SERVICE_NAME", "sessiond-test".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", schedule_delay_ms.into()),
    ])
    .await
}

/// Sends SIGTERM and waits (up to 30 s) for the exit.
async fn stop(mut sessiond: SessiondProcess) -> ExitStatus {
    sessiond.terminate(Duration::from_secs(30)).await
}

fn span_named<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let matching: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.span.name == name).collect();
    assert_eq!(matching.len(), 1, "expected one {name} span: {spans:#?}");
    matching[0]
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| string(kv.value.as_ref()))
}

fn string(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(text) => Some(text.clone()),
        _ => None,
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}
