//! `fabric-gateway`: reads the configuration, sets up logging, builds the service and
//! serves it until SIGTERM or SIGINT, then drains in-flight requests and exits 0.
//!
//! With no configuration at all it runs in local mode: memory sessions, the built-in fake
//! data agent, and `/dev/token` for test tokens. See the README for the variables.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use fabric_gateway::config::Config;
use fabric_gateway::{app, logging, otel};

/// Time allowed, after the request timeout, for in-flight requests to finish at shutdown.
const DRAIN_MARGIN: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    let code = run().await;
    // Spans and metrics still in the exporters' buffers (nothing without OTLP export).
    otel::shutdown().await;
    code
}

async fn run() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            // Logging is not set up yet (its settings are part of what failed).
            eprintln!("fabric-gateway cannot start: {e}");
            eprintln!("See the configuration table in examples/fabric-gateway/README.md.");
            return ExitCode::from(2);
        }
    };
    // Before the subscriber: with OTLP export its bridge needs the tracer.
    if let Err(e) = otel::install(&config) {
        eprintln!("fabric-gateway cannot start: {e}");
        return ExitCode::from(2);
    }
    let subscriber = match logging::subscriber_with_traces(
        config.log_format,
        &config.rust_log,
        std::io::stdout,
        otel::tracer(),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fabric-gateway cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        eprintln!("fabric-gateway: a logger was already installed");
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }

    let bind_addr = config.bind_addr;
    let production = config.environment.is_production();
    let environment = config.environment.as_str();
    let cookie_name = config.session_cookie_name.clone();
    let service = match app::app(config).await {
        Ok(service) => service,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("fabric-gateway cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(bind_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %bind_addr, error = %e, "cannot listen");
            eprintln!("fabric-gateway cannot listen on {bind_addr}: {e} (set BIND_ADDR or PORT)");
            return ExitCode::from(1);
        }
    };
    let addr = listener.local_addr().unwrap_or(bind_addr);
    tracing::info!(address = %addr, environment, "listening");
    if !production {
        print_try_it(addr, &cookie_name);
    }

    let (router, handle) = service.into_parts();
    let drain_deadline = handle.request_timeout() + DRAIN_MARGIN;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = app::serve(router, listener, async move {
        let _ = stop_rx.await;
    });
    tokio::pin!(server);

    tokio::select! {
        result = &mut server => {
            // The server only ends by itself on an I/O error of the listener.
            if let Err(e) = result {
                tracing::error!(error = %e, "server failed");
                return ExitCode::from(1);
            }
            return ExitCode::SUCCESS;
        }
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down: no new connections, draining in-flight requests");
        }
    }
    let _ = stop_tx.send(());
    tokio::select! {
        result = tokio::time::timeout(drain_deadline, &mut server) => match result {
            Ok(Ok(())) => {
                tracing::info!("all requests finished; bye");
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "server failed while draining");
                ExitCode::from(1)
            }
            Err(_) => {
                tracing::warn!(?drain_deadline, "requests still running after the drain deadline; exiting");
                ExitCode::from(1)
            }
        },
        signal = shutdown_signal() => {
            tracing::warn!(signal, "second signal: exiting without waiting for in-flight requests");
            ExitCode::from(1)
        }
    }
}

/// Resolves on SIGTERM (what container runtimes and App Service send) or SIGINT (Ctrl-C).
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}

/// The local-mode banner: the address and the curl lines of the whole flow.
fn print_try_it(addr: SocketAddr, cookie_name: &str) {
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let base = format!("http://{host}");
    println!("fabric-gateway (local mode) listening on {base}");
    println!(
        "Try it (a dev token, sign in, ask; the session cookie `{cookie_name}` goes to cookies.txt):"
    );
    println!(
        "  TOKEN=$(curl -s -X POST {base}/dev/token -H 'Content-Type: application/json' -d '{{\"email\":\"ada@example.com\",\"name\":\"Ada Lovelace\"}}' | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')"
    );
    println!(
        "  curl -s -c cookies.txt -X POST {base}/auth/client-login -H 'Content-Type: application/json' -d \"{{\\\"access_token\\\":\\\"$TOKEN\\\"}}\""
    );
    println!(
        "  curl -s -b cookies.txt -X POST {base}/query -H 'Content-Type: application/json' -d '{{\"query\":\"How many orders last week?\"}}'"
    );
}
