//! # tower-rampart in a tonic gRPC server
//!
//! A greeter (generated from `examples/greeter-proto/proto/greeter.proto`) behind, outermost
//! first:
//!
//! 1. [`CorrelationIdLayer`]: reads `x-correlation-id` from the call's metadata (or mints a
//!    UUIDv7), runs the handler inside a span and task-local carrying it, and returns it in
//!    the response metadata, also on failed calls;
//! 2. [`RateLimitLayer`] with a quota per client IP and one per bearer token. Over quota the
//!    layer answers gRPC itself: a trailers-only response with `grpc-status: 8`, so a tonic
//!    client gets `Status` `RESOURCE_EXHAUSTED` with a message such as
//!    `Rate limit exceeded: 30 per 1 minute` (not a transport error, and the channel stays
//!    usable).
//!
//! ## The peer address
//!
//! tonic puts the connection's addresses in the request extensions as
//! `tonic::transport::server::TcpConnectInfo`; with tower-rampart's `tonic` feature,
//! `Key::client_ip` reads it directly (`tower_rampart::net::peer_addr`). Behind tonic's own
//! TLS the extension is a different type: copy `Request::remote_addr()` into a
//! `tower_rampart::net::PeerAddr` there.
//!
//! ## Why no sessions here
//!
//! Sessions are cookie based: a browser stores the `Set-Cookie` and sends it back. gRPC
//! clients have no cookie jar, and gRPC APIs identify callers with a bearer token in the
//! `authorization` metadata instead (verified by an interceptor or a tower layer of your
//! own). So this example does not add the session layer or the cookie policy (gRPC responses
//! set no cookies). The gRPC counterpart of a per-session quota is a per-token quota:
//! `Key::header("authorization")` hashes the token (SHA-256), so the credential never reaches
//! Redis key names or logs; calls without a token only count against their IP.
//!
//! ```text
//! cargo run --example tonic_greeter
//! ```
//!
//! Environment: `BIND` (default `127.0.0.1:50051`), `RUST_LOG`. A client:
//! `tests/frameworks.rs` calls it with the generated `GreeterClient`.

use std::error::Error;
use std::future::Future;

use greeter_proto::greeter_server::{Greeter, GreeterServer};
use greeter_proto::{HelloReply, HelloRequest};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tower::ServiceBuilder;
use tower_rampart::correlation::{CorrelationId, CorrelationIdLayer};
use tower_rampart::rate_limit::{
    Key, Limit, MissingKey, Quota, RateLimitConfigError, RateLimitLayer,
};

type BoxError = Box<dyn Error + Send + Sync>;

/// The greeter service.
#[derive(Debug, Default)]
pub struct MyGreeter;

#[tonic::async_trait]
impl Greeter for MyGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("name must not be empty"));
        }
        // The correlation layer's task-local reaches the handler through tonic's routing.
        let correlation_id = CorrelationId::current()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        tracing::info!("greeting");
        Ok(Response::new(HelloReply {
            message: format!("Hello, {name}!"),
            correlation_id,
        }))
    }
}

/// The rate limiter of the example: `per_ip` per client address, `per_token` per bearer token.
pub fn rate_limit(per_ip: Quota, per_token: Quota) -> Result<RateLimitLayer, RateLimitConfigError> {
    RateLimitLayer::builder()
        // gRPC clients connect directly here: the TCP peer is the client.
        .quota("ip", per_ip, Key::peer_ip())
        .limit(
            Limit::new("token", per_token, Key::header("authorization"))
                .on_missing_key(MissingKey::Skip),
        )
        .build()
}

/// Serves the greeter on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    limits: RateLimitLayer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let layers = ServiceBuilder::new()
        .layer(CorrelationIdLayer::new())
        .layer(limits);
    Server::builder()
        .layer(layers)
        .add_service(GreeterServer::new(MyGreeter))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let listener =
        TcpListener::bind(std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:50051".into()))
            .await?;
    tracing::info!("gRPC on http://{}", listener.local_addr()?);
    let limits = rate_limit(Quota::per_minute(30), Quota::per_minute(10))?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    serve(listener, limits, shutdown).await?;
    Ok(())
}
