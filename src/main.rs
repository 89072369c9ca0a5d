//! The sessiond binary: read settings, start logging, build, serve until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use sessiond::{config::Settings, startup::Application, telemetry};

// Every request allocates (HTTP/2 frames, protobuf strings); mimalloc's per-thread free lists
// serve that faster than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = Settings::parse();
    // Held until the end: shutting it down flushes the spans still buffered.
    let telemetry = telemetry::init(settings.log_format);
    let served = match Application::build(settings).await {
        Ok(application) => application.run_until_stopped(shutdown_signal()).await,
        Err(error) => Err(error),
    };
    let code = match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole chain on one line, e.g. "SESSIOND_SIGNING_KEY_FILE: cannot read ...".
            tracing::error!("sessiond stopped: {error:#}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
