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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

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

/// How the MCP endpoint answers requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum McpResponseMode {
    /// One `application/json` object.
    Json,
    /// A `text/event-stream` with a notification first, then the response.
    Sse,
}

/// How a scripted `tools/call` fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolFailure {
    /// `isError: true` with this text.
    IsError(String),
    /// `isError: false` but the text is a JSON object with an `error` field.
    JsonErrorText,
    /// A JSON-RPC `error` object instead of a result.
    JsonRpcError,
}

/// One HTTP request the fake received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The `ActivityId` header.
    pub activity_id: Option<String>,
    /// The `Authorization` header (tests check it is the user's token).
    pub authorization: Option<String>,
    /// The `Mcp-Session-Id` header.
    pub mcp_session_id: Option<String>,
    /// The `MCP-Protocol-Version` header.
    pub mcp_protocol_version: Option<String>,
}

/// One JSON-RPC message the MCP endpoint received.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedRpc {
    /// The method (`initialize`, `tools/call`, ...).
    pub method: String,
    /// The params.
    pub params: Value,
    /// The `Mcp-Session-Id` it carried.
    pub session_id: Option<String>,
}

#[derive(Debug)]
struct Message {
    id: String,
    role: String,
    content: String,
    run_id: Option<String>,
    created_at: u64,
}

#[derive(Debug)]
struct Run {
    thread_id: String,
    assistant_id: String,
    question: String,
    polls: u32,
    fail: bool,
    status: &'static str,
    steps: Vec<Value>,
    input: Vec<(String, String)>,
}

#[derive(Debug)]
struct FakeState {
    // knobs
    mcp_mode: McpResponseMode,
    mcp_sessions: bool,
    lose_sessions_on_tool_call: u32,
    tool_name: String,
    tool_argument: String,
    tool_failures: Vec<ToolFailure>,
    status_failures: Vec<(u16, Option<String>)>,
    rate_limits: Vec<u64>,
    answer_delay: Duration,
    failing_runs: u32,
    shared_thread: bool,
    required_token: Option<String>,
    // protocol state
    sessions: HashMap<String, ()>,
    threads: HashMap<String, Vec<Message>>,
    runs: HashMap<String, Run>,
    // observations
    requests: Vec<RecordedRequest>,
    rpcs: Vec<RecordedRpc>,
    deleted_threads: Vec<String>,
    created_threads: Vec<String>,
    run_order: Vec<String>,
    next_id: u64,
}

impl Default for FakeState {
    fn default() -> Self {
        Self {
            mcp_mode: McpResponseMode::Json,
            mcp_sessions: true,
            lose_sessions_on_tool_call: 0,
            tool_name: DEFAULT_TOOL_NAME.to_owned(),
            tool_argument: DEFAULT_TOOL_ARGUMENT.to_owned(),
            tool_failures: Vec::new(),
            status_failures: Vec::new(),
            rate_limits: Vec::new(),
            answer_delay: Duration::ZERO,
            failing_runs: 0,
            shared_thread: false,
            required_token: None,
            sessions: HashMap::new(),
            threads: HashMap::new(),
            runs: HashMap::new(),
            requests: Vec::new(),
            rpcs: Vec::new(),
            deleted_threads: Vec::new(),
            created_threads: Vec::new(),
            run_order: Vec::new(),
            next_id: 1,
        }
    }
}

impl FakeState {
    fn new_id(&mut self, prefix: &str) -> String {
        let n = self.next_id;
        self.next_id += 1;
        format!("{prefix}_{n:06}")
    }
}

/// Scripts the fake's behaviour and reads what it saw. Clones share the same fake.
#[derive(Clone, Debug, Default)]
pub struct FakeControls {
    state: Arc<Mutex<FakeState>>,
}

impl FakeControls {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answer MCP requests as JSON (the default) or as SSE.
    pub fn set_mcp_response_mode(&self, mode: McpResponseMode) {
        self.lock().mcp_mode = mode;
    }

    /// Issue `Mcp-Session-Id`s (the default) or run sessionless.
    pub fn set_mcp_sessions(&self, enabled: bool) {
        self.lock().mcp_sessions = enabled;
    }

    /// Forget every MCP session now: requests carrying their ids get 404.
    pub fn forget_mcp_sessions(&self) {
        self.lock().sessions.clear();
    }

    /// The next `n` `tools/call`s that carry a session id find their session forgotten
    /// (404), as when a load balancer moves the client to another server.
    pub fn lose_session_on_next_tool_calls(&self, n: u32) {
        self.lock().lose_sessions_on_tool_call = n;
    }

    /// The tool name and string argument `tools/list` announces.
    pub fn set_tool(&self, name: &str, argument: &str) {
        let mut s = self.lock();
        s.tool_name = name.to_owned();
        s.tool_argument = argument.to_owned();
    }

    /// The next `tools/call` fails this way (queue several by calling again).
    pub fn fail_next_tool_call(&self, failure: ToolFailure) {
        self.lock().tool_failures.push(failure);
    }

    /// The next `n` requests (except `DELETE`s) are answered with `status` and a Fabric
    /// error body carrying `error_code`.
    pub fn fail_next_requests(&self, n: usize, status: u16, error_code: Option<&str>) {
        let mut s = self.lock();
        for _ in 0..n {
            s.status_failures
                .push((status, error_code.map(str::to_owned)));
        }
    }

    /// The next `n` requests (except `DELETE`s) get `429` with `Retry-After: retry_after_secs`.
    pub fn rate_limit_next_requests(&self, n: usize, retry_after_secs: u64) {
        let mut s = self.lock();
        for _ in 0..n {
            s.rate_limits.push(retry_after_secs);
        }
    }

    /// `tools/call` and every run poll wait this long before answering.
    pub fn set_answer_delay(&self, delay: Duration) {
        self.lock().answer_delay = delay;
    }

    /// The next `n` runs fail with `server_error` on their first poll, before any tool call.
    pub fn fail_next_runs(&self, n: u32) {
        self.lock().failing_runs = n;
    }

    /// Hand every caller the same thread, already holding other runs' messages (and add
    /// another run's answer after each of ours, so "the newest assistant message" is wrong).
    pub fn set_shared_thread(&self, shared: bool) {
        self.lock().shared_thread = shared;
    }

    /// Accept only this bearer token (any non-empty one when `None`, the default).
    pub fn set_required_token(&self, token: Option<&str>) {
        self.lock().required_token = token.map(str::to_owned);
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Every JSON-RPC message the MCP endpoint received, in order.
    pub fn rpcs(&self) -> Vec<RecordedRpc> {
        self.lock().rpcs.clone()
    }

    /// How many times `method` was called over MCP.
    pub fn rpc_count(&self, method: &str) -> usize {
        self.lock()
            .rpcs
            .iter()
            .filter(|r| r.method == method)
            .count()
    }

    /// Ids of the threads created, in order.
    pub fn created_threads(&self) -> Vec<String> {
        self.lock().created_threads.clone()
    }

    /// Ids of the threads deleted, in order.
    pub fn deleted_threads(&self) -> Vec<String> {
        self.lock().deleted_threads.clone()
    }

    /// How many runs were created.
    pub fn runs_created(&self) -> usize {
        self.lock().run_order.len()
    }

    /// The thread's messages (role, content) when the last run was created.
    pub fn last_run_input(&self) -> Vec<(String, String)> {
        let s = self.lock();
        s.run_order
            .last()
            .and_then(|id| s.runs.get(id))
            .map(|r| r.input.clone())
            .unwrap_or_default()
    }

    /// Live MCP sessions.
    pub fn mcp_session_count(&self) -> usize {
        self.lock().sessions.len()
    }
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
        let assistants = Router::new()
            .route("/assistants", post(create_assistant))
            .route("/threads", post(create_thread))
            .route("/threads/{thread}", axum::routing::delete(delete_thread))
            .route(
                "/threads/{thread}/messages",
                post(add_message).get(list_messages),
            )
            .route("/threads/{thread}/runs", post(create_run))
            .route("/threads/{thread}/runs/{run}", get(get_run))
            .route("/threads/{thread}/runs/{run}/steps", get(list_steps))
            .route_layer(middleware::from_fn(check_api_version));
        Router::new()
            .route(
                "/v1/mcp/workspaces/{ws}/dataagents/{id}/agent",
                post(mcp_post).delete(mcp_delete).get(mcp_get),
            )
            .nest(
                "/v1/workspaces/{ws}/dataagents/{id}/aiassistant/openai",
                assistants,
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
        s.requests.push(RecordedRequest {
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            query: req.uri().query().map(str::to_owned),
            activity_id: header_string(headers, "activityid"),
            authorization: authorization.clone(),
            mcp_session_id: header_string(headers, "mcp-session-id"),
            mcp_protocol_version: header_string(headers, "mcp-protocol-version"),
        });
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

// ----------------------------------------------------------------------------- MCP

fn rpc_error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn mcp_reply(mode: McpResponseMode, message: Value, session: Option<&str>) -> Response {
    let mut resp = match mode {
        McpResponseMode::Json => axum::Json(message).into_response(),
        McpResponseMode::Sse => {
            let progress = json!({
                "jsonrpc": "2.0",
                "method": "notifications/message",
                "params": {"level": "info", "data": "thinking"},
            });
            let body = format!(
                ": fake data agent\n\nevent: message\nid: 1\ndata: {progress}\n\nevent: message\nid: 2\ndata: {message}\n\n"
            );
            let mut r = body.into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
    };
    if let Some(id) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        resp.headers_mut().insert("mcp-session-id", id);
    }
    resp
}

fn session_missing() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(rpc_error(&Value::Null, -32001, "Session not found")),
    )
        .into_response()
}

async fn mcp_post(
    State(controls): State<FakeControls>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let accept = header_string(&headers, "accept").unwrap_or_default();
    if !(accept.contains("application/json") && accept.contains("text/event-stream")) {
        return (
            StatusCode::NOT_ACCEPTABLE,
            "Accept must list application/json and text/event-stream",
        )
            .into_response();
    }
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(rpc_error(&Value::Null, -32700, "Parse error")),
        )
            .into_response();
    };
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let id = message.get("id").cloned();
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let session_id = header_string(&headers, "mcp-session-id");
    let version = header_string(&headers, "mcp-protocol-version");

    let (mode, delay, tool_failure, tool, lose) = {
        let mut s = controls.lock();
        s.rpcs.push(RecordedRpc {
            method: method.clone(),
            params: params.clone(),
            session_id: session_id.clone(),
        });
        if method == "initialize" {
            let mode = s.mcp_mode;
            let session = s
                .mcp_sessions
                .then(|| uuid::Uuid::new_v4().simple().to_string());
            if let Some(sid) = &session {
                s.sessions.insert(sid.clone(), ());
            }
            drop(s);
            let result = json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "DataAgent MCP Server", "version": "1.0.0"},
            });
            let id = id.unwrap_or(Value::Null);
            return mcp_reply(
                mode,
                json!({"jsonrpc": "2.0", "id": id, "result": result}),
                session.as_deref(),
            );
        }
        if s.mcp_sessions {
            match &session_id {
                None => {
                    return (
                        StatusCode::BAD_REQUEST,
                        axum::Json(rpc_error(&Value::Null, -32000, "Mcp-Session-Id required")),
                    )
                        .into_response();
                }
                Some(sid) if !s.sessions.contains_key(sid) => return session_missing(),
                Some(_) => {}
            }
        }
        if version.as_deref() != Some("2025-06-18") {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(rpc_error(
                    &Value::Null,
                    -32000,
                    "MCP-Protocol-Version missing or unsupported",
                )),
            )
                .into_response();
        }
        let lose =
            method == "tools/call" && session_id.is_some() && s.lose_sessions_on_tool_call > 0;
        if lose {
            s.lose_sessions_on_tool_call -= 1;
            if let Some(sid) = &session_id {
                s.sessions.remove(sid);
            }
        }
        let failure = (method == "tools/call" && !lose && !s.tool_failures.is_empty())
            .then(|| s.tool_failures.remove(0));
        (
            s.mcp_mode,
            s.answer_delay,
            failure,
            (s.tool_name.clone(), s.tool_argument.clone()),
            lose,
        )
    };
    if lose {
        return session_missing();
    }
    let Some(id) = id else {
        // A notification.
        return StatusCode::ACCEPTED.into_response();
    };
    let reply = |result: Value| json!({"jsonrpc": "2.0", "id": id, "result": result});
    let message = match method.as_str() {
        "tools/list" => reply(json!({"tools": [{
            "name": tool.0,
            "description": "Answers questions about the fake sales data.",
            "inputSchema": {
                "type": "object",
                "properties": {tool.1.clone(): {"type": "string", "description": "The question"}},
                "required": [tool.1],
            },
        }]})),
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str);
            let question = params
                .get("arguments")
                .and_then(|a| a.get(&tool.1))
                .and_then(Value::as_str);
            match (name, question) {
                (Some(n), Some(q)) if n == tool.0 => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    match tool_failure {
                        None => reply(json!({
                            "content": [{"type": "text", "text": fake_answer(q)}],
                            "isError": false,
                        })),
                        Some(ToolFailure::IsError(text)) => reply(json!({
                            "content": [{"type": "text", "text": text}],
                            "isError": true,
                        })),
                        Some(ToolFailure::JsonErrorText) => reply(json!({
                            "content": [{"type": "text", "text": "{\"error\": \"Query failed\", \"detail\": \"internal\"}"}],
                            "isError": false,
                        })),
                        Some(ToolFailure::JsonRpcError) => rpc_error(&id, -32603, "Internal error"),
                    }
                }
                _ => rpc_error(&id, -32602, "Unknown tool or missing argument"),
            }
        }
        "ping" => reply(json!({})),
        _ => rpc_error(&id, -32601, "Method not found"),
    };
    mcp_reply(mode, message, None)
}

async fn mcp_delete(State(controls): State<FakeControls>, headers: HeaderMap) -> StatusCode {
    match header_string(&headers, "mcp-session-id") {
        Some(sid) if controls.lock().sessions.remove(&sid).is_some() => StatusCode::OK,
        Some(_) => StatusCode::NOT_FOUND,
        None => StatusCode::BAD_REQUEST,
    }
}

async fn mcp_get() -> StatusCode {
    StatusCode::METHOD_NOT_ALLOWED
}

// ----------------------------------------------------------------------- assistants

async fn check_api_version(
    Query(query): Query<HashMap<String, String>>,
    req: Request,
    next: Next,
) -> Response {
    match query.get("api-version") {
        Some(v) if API_VERSIONS.contains(&v.as_str()) => next.run(req).await,
        _ => fabric_error(
            StatusCode::BAD_REQUEST,
            "UnsupportedApiVersion",
            "The api-version query parameter is missing or not supported.",
        ),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn not_found(what: &str) -> Response {
    fabric_error(
        StatusCode::NOT_FOUND,
        "EntityNotFound",
        &format!("{what} not found"),
    )
}

fn message_json(thread_id: &str, m: &Message) -> Value {
    json!({
        "id": m.id,
        "object": "thread.message",
        "created_at": m.created_at,
        "thread_id": thread_id,
        "role": m.role,
        "run_id": m.run_id,
        "content": [{"type": "text", "text": {"value": m.content, "annotations": []}}],
    })
}

async fn create_assistant(State(controls): State<FakeControls>) -> Response {
    let id = controls.lock().new_id("asst");
    axum::Json(
        json!({"id": id, "object": "assistant", "created_at": now_secs(), "model": "not used"}),
    )
    .into_response()
}

async fn create_thread(State(controls): State<FakeControls>) -> Response {
    let mut s = controls.lock();
    let id = if s.shared_thread {
        let id = "thread_shared".to_owned();
        if !s.threads.contains_key(&id) {
            let now = now_secs();
            let foreign = vec![
                Message {
                    id: "msg_foreign_q".to_owned(),
                    role: "user".to_owned(),
                    content: "Another user's question".to_owned(),
                    run_id: None,
                    created_at: now,
                },
                Message {
                    id: "msg_foreign_a".to_owned(),
                    role: "assistant".to_owned(),
                    content: "Another user's answer".to_owned(),
                    run_id: Some("run_foreign".to_owned()),
                    created_at: now,
                },
            ];
            s.threads.insert(id.clone(), foreign);
        }
        id
    } else {
        let id = s.new_id("thread");
        s.threads.insert(id.clone(), Vec::new());
        id
    };
    s.created_threads.push(id.clone());
    axum::Json(json!({"id": id, "object": "thread", "created_at": now_secs(), "metadata": {}}))
        .into_response()
}

async fn delete_thread(
    State(controls): State<FakeControls>,
    Path((_, _, thread)): Path<(String, String, String)>,
) -> Response {
    let mut s = controls.lock();
    if s.threads.remove(&thread).is_none() {
        return not_found("thread");
    }
    s.deleted_threads.push(thread.clone());
    axum::Json(json!({"id": thread, "object": "thread.deleted", "deleted": true})).into_response()
}

async fn add_message(
    State(controls): State<FakeControls>,
    Path((_, _, thread)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return fabric_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "body is not JSON",
        );
    };
    let role = body.get("role").and_then(Value::as_str).unwrap_or("");
    let content = body.get("content").and_then(Value::as_str).unwrap_or("");
    if !matches!(role, "user" | "assistant") || content.is_empty() {
        return fabric_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "role or content invalid",
        );
    }
    let mut s = controls.lock();
    let id = s.new_id("msg");
    let Some(messages) = s.threads.get_mut(&thread) else {
        return not_found("thread");
    };
    let m = Message {
        id,
        role: role.to_owned(),
        content: content.to_owned(),
        run_id: None,
        created_at: now_secs(),
    };
    let json = message_json(&thread, &m);
    messages.push(m);
    axum::Json(json).into_response()
}

async fn list_messages(
    State(controls): State<FakeControls>,
    Path((_, _, thread)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let s = controls.lock();
    let Some(messages) = s.threads.get(&thread) else {
        return not_found("thread");
    };
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let mut ordered: Vec<&Message> = messages.iter().collect();
    if query.get("order").map(String::as_str) != Some("asc") {
        ordered.reverse();
    }
    if let Some(after) = query.get("after")
        && let Some(pos) = ordered.iter().position(|m| &m.id == after)
    {
        ordered.drain(..=pos);
    }
    let has_more = ordered.len() > limit;
    let page: Vec<Value> = ordered
        .iter()
        .take(limit)
        .map(|m| message_json(&thread, m))
        .collect();
    axum::Json(json!({
        "object": "list",
        "data": page,
        "first_id": page.first().and_then(|m| m.get("id")).cloned(),
        "last_id": page.last().and_then(|m| m.get("id")).cloned(),
        "has_more": has_more,
    }))
    .into_response()
}

fn run_json(id: &str, run: &Run) -> Value {
    let mut v = json!({
        "id": id,
        "object": "thread.run",
        "created_at": now_secs(),
        "thread_id": run.thread_id,
        "assistant_id": run.assistant_id,
        "status": run.status,
        "last_error": null,
    });
    if run.status == "failed" {
        v["last_error"] =
            json!({"code": "server_error", "message": "Sorry, something went wrong."});
    }
    v
}

async fn create_run(
    State(controls): State<FakeControls>,
    Path((_, _, thread)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let assistant_id = serde_json::from_slice::<Value>(&body).ok().and_then(|b| {
        b.get("assistant_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let Some(assistant_id) = assistant_id else {
        return fabric_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "assistant_id missing",
        );
    };
    let mut s = controls.lock();
    let id = s.new_id("run");
    let Some(messages) = s.threads.get(&thread) else {
        return not_found("thread");
    };
    let input: Vec<(String, String)> = messages
        .iter()
        .map(|m| (m.role.clone(), m.content.clone()))
        .collect();
    let question = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.clone())
        .unwrap_or_default();
    let fail = s.failing_runs > 0;
    if fail {
        s.failing_runs -= 1;
    }
    let run = Run {
        thread_id: thread,
        assistant_id,
        question,
        polls: 0,
        fail,
        status: "queued",
        steps: Vec::new(),
        input,
    };
    let json = run_json(&id, &run);
    s.runs.insert(id.clone(), run);
    s.run_order.push(id);
    axum::Json(json).into_response()
}

async fn get_run(
    State(controls): State<FakeControls>,
    Path((_, _, thread, run_id)): Path<(String, String, String, String)>,
) -> Response {
    let delay = controls.lock().answer_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut s = controls.lock();
    let shared = s.shared_thread;
    let answer_id = s.new_id("msg");
    let foreign_id = s.new_id("msg");
    let Some(run) = s.runs.get_mut(&run_id).filter(|r| r.thread_id == thread) else {
        return not_found("run");
    };
    run.polls += 1;
    let mut completed_answer = None;
    match (run.status, run.fail) {
        ("queued" | "in_progress", true) => run.status = "failed",
        ("queued", false) => run.status = "in_progress",
        ("in_progress", false) => {
            run.status = "completed";
            let args = json!({"code": format!("```sql\n{FAKE_SQL}\n```"), "datasource": "sales"});
            run.steps = vec![
                json!({"id": "step_1", "object": "thread.run.step", "type": "tool_calls", "status": "completed",
                    "step_details": {"type": "tool_calls", "tool_calls": [{
                        "id": "call_1", "type": "function",
                        "function": {"name": "analyze_lakehouse", "arguments": args.to_string(),
                                     "output": json!({"result": fake_table()}).to_string()}}]}}),
                json!({"id": "step_2", "object": "thread.run.step", "type": "message_creation", "status": "completed",
                    "step_details": {"type": "message_creation", "message_creation": {"message_id": answer_id}}}),
            ];
            completed_answer = Some(fake_answer(&run.question));
        }
        _ => {}
    }
    let json = run_json(&run_id, run);
    if let Some(answer) = completed_answer {
        let now = now_secs();
        if let Some(messages) = s.threads.get_mut(&thread) {
            messages.push(Message {
                id: answer_id,
                role: "assistant".to_owned(),
                content: answer,
                run_id: Some(run_id.clone()),
                created_at: now,
            });
            if shared {
                messages.push(Message {
                    id: foreign_id,
                    role: "assistant".to_owned(),
                    content: "Another user's newer answer".to_owned(),
                    run_id: Some("run_foreign_newer".to_owned()),
                    created_at: now,
                });
            }
        }
    }
    axum::Json(json).into_response()
}

async fn list_steps(
    State(controls): State<FakeControls>,
    Path((_, _, thread, run_id)): Path<(String, String, String, String)>,
) -> Response {
    let s = controls.lock();
    let Some(run) = s.runs.get(&run_id).filter(|r| r.thread_id == thread) else {
        return not_found("run");
    };
    axum::Json(json!({"object": "list", "data": run.steps, "has_more": false})).into_response()
}
