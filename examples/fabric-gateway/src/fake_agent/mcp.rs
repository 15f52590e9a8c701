//! The fake's MCP endpoint: JSON-RPC 2.0 over Streamable HTTP, answering as JSON or SSE.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde_json::{Value, json};

use super::controls::{FakeControls, McpResponseMode, RecordedRpc, ToolFailure};
use super::{fake_answer, header_string};

/// The MCP endpoint's methods: `POST` a JSON-RPC message, `DELETE` a session, and `GET`
/// (no server-initiated stream: 405).
pub(super) fn routes() -> MethodRouter<FakeControls> {
    post(mcp_post).delete(mcp_delete).get(mcp_get)
}

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
        super::controls::record(
            &mut s.rpcs,
            RecordedRpc {
                method: method.clone(),
                params: params.clone(),
                session_id: session_id.clone(),
            },
        );
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
