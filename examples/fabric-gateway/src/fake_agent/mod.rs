//! An in-memory Fabric data agent speaking both protocols, over real HTTP.
//!
//! Used by local mode (the gateway starts one in-process and speaks MCP to it), runnable
//! alone (`cargo run -p fabric-gateway --bin fake-data-agent`), and scriptable by tests
//! through [`FakeControls`] to misbehave the ways the real service does.
//!
//! - MCP at `/v1/mcp/workspaces/{ws}/dataagents/{id}/agent`: `initialize`,
//!   `notifications/initialized`, `tools/list`, `tools/call`; answers as JSON or as SSE
//!   ([`McpResponseMode`]), with or without `Mcp-Session-Id`; `DELETE` ends a session.
//! - Assistants at `/v1/workspaces/{ws}/dataagents/{id}/aiassistant/openai`: assistants,
//!   threads, messages, runs (`queued` → `in_progress` → `completed` over successive polls),
//!   run steps with a SQL query and a result table; `api-version` is checked.
//! - Every request needs `Authorization: Bearer <token>` (401 without).
//!
//! Answers are deterministic ([`fake_answer`]), so tests can assert the text.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use fabric_gateway::fake_agent::{FakeAgent, McpResponseMode};
//!
//! let agent = FakeAgent::start().await?;
//! agent.controls.set_mcp_response_mode(McpResponseMode::Sse);
//! println!("MCP at {}", agent.mcp_url());
//! # Ok(()) }
//! ```

mod assistants;
mod controls;
mod mcp;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use controls::{FakeControls, McpResponseMode, RecordedRequest, RecordedRpc, ToolFailure};

/// Path of the MCP endpoint (with the fake's workspace and agent ids).
pub const MCP_PATH: &str = "/v1/mcp/workspaces/fake-workspace/dataagents/fake-agent/agent";
/// Base path of the assistants API (with the fake's workspace and agent ids).
pub const ASSISTANTS_PATH: &str =
    "/v1/workspaces/fake-workspace/dataagents/fake-agent/aiassistant/openai";
/// `api-version` values the assistants API accepts.
pub const API_VERSIONS: &[&str] = &["2024-05-01-preview", "2024-02-15-preview"];
/// The SQL query every fake run records in its steps.
pub const FAKE_SQL: &str = "SELECT TOP 12 region, SUM(amount) AS total FROM sales GROUP BY region";
/// The tool name the fake's MCP endpoint lists by default.
pub const DEFAULT_TOOL_NAME: &str = "DataAgent_FakeSales";
/// The tool argument the fake's MCP endpoint lists by default.
pub const DEFAULT_TOOL_ARGUMENT: &str = "userQuestion";

/// The fake's deterministic answer to `question`.
///
/// ```
/// assert_eq!(fabric_gateway::fake_agent::fake_answer("Hi?"), "Fake answer to: Hi?");
/// ```
pub fn fake_answer(question: &str) -> String {
    format!("Fake answer to: {question}")
}

/// The markdown table the fake's run steps output (a header, a separator, 12 rows).
pub fn fake_table() -> String {
    let mut t = String::from("| region | total |\n|---|---|\n");
    for i in 1..=12 {
        t.push_str(&format!("| region-{i} | {} |\n", i * 100));
    }
    t
}

/// Starts fakes.
#[derive(Debug)]
pub struct FakeAgent;

impl FakeAgent {
    /// Starts a fake on a free loopback port.
    pub async fn start() -> std::io::Result<FakeAgentHandle> {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await?).await
    }

    /// Starts a fake on `listener`.
    pub async fn start_on(listener: TcpListener) -> std::io::Result<FakeAgentHandle> {
        let addr = listener.local_addr()?;
        let controls = FakeControls::default();
        let app = Self::router(controls.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "fake data agent stopped");
            }
        });
        Ok(FakeAgentHandle {
            base_url: format!("http://{addr}"),
            addr,
            controls,
            task,
        })
    }

    /// The fake's routes, driven by `controls`.
    pub fn router(controls: FakeControls) -> Router {
        Router::new()
            .route(
                "/v1/mcp/workspaces/{ws}/dataagents/{id}/agent",
                mcp::routes(),
            )
            .nest(
                "/v1/workspaces/{ws}/dataagents/{id}/aiassistant/openai",
                assistants::routes(),
            )
            .layer(middleware::from_fn_with_state(controls.clone(), guard))
            .with_state(controls)
    }
}

/// A running fake. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeAgentHandle {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// Scripts the fake and reads what it saw.
    pub controls: FakeControls,
    task: JoinHandle<()>,
}

impl FakeAgentHandle {
    /// The MCP endpoint URL.
    pub fn mcp_url(&self) -> String {
        format!("{}{MCP_PATH}", self.base_url)
    }

    /// The assistants base URL.
    pub fn assistants_url(&self) -> String {
        format!("{}{ASSISTANTS_PATH}", self.base_url)
    }
}

impl Drop for FakeAgentHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header_string(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn fabric_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({
        "errorCode": code,
        "message": message,
        "requestId": uuid::Uuid::new_v4().to_string(),
    });
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// Records the request, checks the bearer token, applies scripted failures.
async fn guard(State(controls): State<FakeControls>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let authorization = header_string(headers, "authorization");
    let is_delete = req.method() == axum::http::Method::DELETE;
    let injected = {
        let mut s = controls.lock();
        controls::record(
            &mut s.requests,
            RecordedRequest {
                method: req.method().to_string(),
                path: req.uri().path().to_owned(),
                query: req.uri().query().map(str::to_owned),
                activity_id: header_string(headers, "activityid"),
                correlation_id: header_string(headers, "x-correlation-id"),
                authorization: authorization.clone(),
                mcp_session_id: header_string(headers, "mcp-session-id"),
                mcp_protocol_version: header_string(headers, "mcp-protocol-version"),
                traceparent: header_string(headers, "traceparent"),
            },
        );
        let token = authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let token_ok = match (&s.required_token, token) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(required), Some(t)) => required == t,
        };
        if !token_ok {
            Some(fabric_error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "The bearer token is missing or invalid.",
            ))
        } else if is_delete {
            None
        } else if !s.rate_limits.is_empty() {
            let secs = s.rate_limits.remove(0);
            let mut resp = fabric_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RequestBlocked",
                "Request is blocked by the upstream service until further notice.",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            Some(resp)
        } else if !s.status_failures.is_empty() {
            let (status, code) = s.status_failures.remove(0);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(fabric_error(
                status,
                code.as_deref().unwrap_or("ScriptedFailure"),
                "Scripted failure of the fake data agent (internal detail that must not reach users).",
            ))
        } else {
            None
        }
    };
    match injected {
        Some(resp) => resp,
        None => next.run(req).await,
    }
}
