//! The data agent's MCP endpoint: JSON-RPC 2.0 over the Streamable HTTP transport.
//!
//! One question = `initialize` → `notifications/initialized` → (`tools/list`, cached) →
//! `tools/call` → `DELETE` of the session (best effort). The MCP session is opened per
//! question because it is bound to the caller's token; answers take tens of seconds, so
//! the two extra round trips do not matter, and the gateway keeps no per-user state.

use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use reqwest::{Response, Url};

use crate::outbound::spawn_in_request_scope;
use serde_json::{Value, json};

use super::error::{CAPACITY_PAUSED, ErrorCategory, FabricError};
use super::history::{ChatMessage, fold_into_question, table_lines};
use super::transport::{Call, MAX_BODY_BYTES, Transport, read_body};
use super::{Answer, content_text};

/// The protocol version we ask for.
pub(crate) const PROTOCOL_VERSION: &str = "2025-06-18";
/// Versions whose Streamable HTTP transport we speak.
const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

#[derive(Clone, Debug)]
struct Tool {
    name: String,
    argument: String,
}

#[derive(Debug)]
struct Session {
    id: Option<HeaderValue>,
    version: HeaderValue,
    next_id: u64,
}

/// Why a request failed: the session is gone (re-initialize) or a real failure.
enum Failure {
    SessionLost,
    /// A JSON-RPC `error` answer (a protocol failure).
    Rpc(FabricError),
    Fabric(FabricError),
}

impl Failure {
    fn into_error(self, what: &str) -> FabricError {
        match self {
            Self::Rpc(e) | Self::Fabric(e) => e,
            Self::SessionLost => FabricError::new(
                ErrorCategory::Error,
                format!("{what}: the data agent lost the MCP session"),
            )
            .with_status(404),
        }
    }
}

impl From<FabricError> for Failure {
    fn from(e: FabricError) -> Self {
        Self::Fabric(e)
    }
}

#[derive(Debug)]
pub(crate) struct McpClient {
    url: Url,
    transport: Transport,
    tool: Mutex<Option<Tool>>,
}

impl McpClient {
    pub(crate) fn new(url: Url, transport: Transport) -> Self {
        Self {
            url,
            transport,
            tool: Mutex::new(None),
        }
    }

    pub(crate) async fn ask(
        &self,
        call: &Call,
        question: &str,
        history: &[ChatMessage],
    ) -> Result<Answer, FabricError> {
        let (text, history_used) = fold_into_question(history, question);
        let mut session = self.initialize(call).await?;
        let mut reinitialized = false;
        let result = loop {
            match self.ask_in_session(call, &mut session, &text).await {
                Err(Failure::SessionLost) if !reinitialized => {
                    tracing::info!("data agent lost the MCP session; initializing again");
                    reinitialized = true;
                    session = self.initialize(call).await?;
                }
                Err(failure) => break Err(failure.into_error("tools/call")),
                Ok(answer) => break Ok(answer),
            }
        };
        self.close(call, &session);
        let answer = result?;
        let preview = table_lines(&answer);
        Ok(Answer {
            text: answer,
            run_status: Some("completed".to_owned()),
            steps_count: 0,
            messages_count: history_used + 2,
            sql_query: None,
            data_preview: (!preview.is_empty()).then_some(preview),
        })
    }

    async fn ask_in_session(
        &self,
        call: &Call,
        session: &mut Session,
        text: &str,
    ) -> Result<String, Failure> {
        let tool = self.tool(call, session).await?;
        let mut arguments = serde_json::Map::new();
        arguments.insert(tool.argument.clone(), Value::String(text.to_owned()));
        let params = json!({ "name": tool.name, "arguments": arguments });
        // The tool call is where the agent thinks: give it the whole remaining deadline.
        let result = match self
            .request(call, session, "tools/call", params, Some(call.remaining()))
            .await
        {
            Err(Failure::Rpc(e)) => {
                // A JSON-RPC error (e.g. unknown tool): list the tools again next time.
                *self.tool.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Err(Failure::Rpc(e));
            }
            other => other?,
        };
        tool_result_text(&result).map_err(Failure::Fabric)
    }

    async fn initialize(&self, call: &Call) -> Result<Session, FabricError> {
        let mut session = Session {
            id: None,
            version: HeaderValue::from_static(PROTOCOL_VERSION),
            next_id: 1,
        };
        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": { "name": "fabric-gateway", "version": env!("CARGO_PKG_VERSION") },
        });
        // No session id is sent, so a 404 here is a wrong URL (NOT_FOUND), never a lost session.
        let (headers, result) = self
            .post_request(call, None, &mut session, "initialize", params, None)
            .await
            .map_err(|f| f.into_error("initialize"))?;
        let version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or(PROTOCOL_VERSION);
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(FabricError::new(
                ErrorCategory::Error,
                format!("the data agent speaks MCP version {version:?}, which is not supported"),
            ));
        }
        session.version = HeaderValue::from_str(version)
            .map_err(|_| FabricError::new(ErrorCategory::Error, "invalid MCP protocol version"))?;
        session.id = headers.get(SESSION_HEADER).cloned();
        if let Some(id) = &mut session.id {
            id.set_sensitive(true);
        }
        self.notify(call, &session, "notifications/initialized")
            .await?;
        Ok(session)
    }

    async fn tool(&self, call: &Call, session: &mut Session) -> Result<Tool, Failure> {
        if let Some(tool) = self.tool.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(tool);
        }
        let result = self
            .request(call, session, "tools/list", json!({}), None)
            .await?;
        let tool = pick_tool(&result)?;
        *self.tool.lock().unwrap_or_else(|p| p.into_inner()) = Some(tool.clone());
        Ok(tool)
    }

    async fn request(
        &self,
        call: &Call,
        session: &mut Session,
        method: &str,
        params: Value,
        attempt_timeout: Option<Duration>,
    ) -> Result<Value, Failure> {
        let sid = session.id.clone();
        self.post_request(call, sid.as_ref(), session, method, params, attempt_timeout)
            .await
            .map(|(_, v)| v)
    }

    /// Posts one JSON-RPC request and returns the response headers and the `result` of the
    /// message whose id matches.
    async fn post_request(
        &self,
        call: &Call,
        session_id: Option<&HeaderValue>,
        session: &mut Session,
        method: &str,
        params: Value,
        attempt_timeout: Option<Duration>,
    ) -> Result<(HeaderMap, Value), Failure> {
        let id = session.next_id;
        session.next_id += 1;
        let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let version = (method != "initialize").then(|| session.version.clone());
        let mut resp = self
            .post(
                call,
                session_id,
                version.as_ref(),
                &body,
                method,
                attempt_timeout,
            )
            .await?;
        let headers = resp.headers().clone();
        let message = read_response(&mut resp, id, call, method).await?;
        if let Some(error) = message.get("error") {
            let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
            tracing::warn!(method, code, "data agent answered with a JSON-RPC error");
            return Err(Failure::Rpc(FabricError::new(
                ErrorCategory::Error,
                format!("{method}: JSON-RPC error {code}"),
            )));
        }
        match message.get("result") {
            Some(result) => Ok((headers, result.clone())),
            None => Err(Failure::Fabric(FabricError::new(
                ErrorCategory::Error,
                format!("{method}: a JSON-RPC response without result"),
            ))),
        }
    }

    async fn notify(
        &self,
        call: &Call,
        session: &Session,
        method: &str,
    ) -> Result<(), FabricError> {
        let body = json!({ "jsonrpc": "2.0", "method": method });
        match self
            .post(
                call,
                session.id.as_ref(),
                Some(&session.version),
                &body,
                method,
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(f) => Err(f.into_error(method)),
        }
    }

    async fn post(
        &self,
        call: &Call,
        session_id: Option<&HeaderValue>,
        version: Option<&HeaderValue>,
        body: &Value,
        what: &str,
        attempt_timeout: Option<Duration>,
    ) -> Result<Response, Failure> {
        let result = self
            .transport
            .send(call, what, attempt_timeout, || {
                let mut req = self
                    .transport
                    .client
                    .reqwest()
                    .post(self.url.clone())
                    .header(http::header::ACCEPT, "application/json, text/event-stream")
                    .json(body);
                if let Some(id) = session_id {
                    req = req.header(SESSION_HEADER, id.clone());
                }
                if let Some(v) = version {
                    req = req.header(VERSION_HEADER, v.clone());
                }
                req
            })
            .await;
        match result {
            Err(e)
                if e.status() == Some(404) && session_id.is_some() && e.error_code().is_none() =>
            {
                Err(Failure::SessionLost)
            }
            other => other.map_err(Failure::Fabric),
        }
    }

    /// Ends the MCP session (best effort, in the background).
    fn close(&self, call: &Call, session: &Session) {
        let Some(id) = session.id.clone() else {
            return;
        };
        let client = self.transport.client.clone();
        let request = client
            .reqwest()
            .delete(self.url.clone())
            .headers(call.headers())
            .header(SESSION_HEADER, id)
            .header(VERSION_HEADER, session.version.clone())
            .timeout(Duration::from_secs(5));
        spawn_in_request_scope(async move {
            if let Err(e) = client.send(request).await {
                tracing::debug!(error = %e, "closing the MCP session failed");
            }
        });
    }
}

/// Reads a JSON or SSE response and returns the JSON-RPC message with `id`.
async fn read_response(
    resp: &mut Response,
    id: u64,
    call: &Call,
    what: &str,
) -> Result<Value, FabricError> {
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let body_error = |e: reqwest::Error| call.body_error(what, &e);
    let no_answer = || {
        FabricError::new(
            ErrorCategory::Error,
            format!("{what}: the data agent's answer holds no response to our request"),
        )
    };
    if content_type.starts_with("text/event-stream") {
        let mut parser = SseParser::default();
        // The whole stream is bounded, not only what is buffered: a server sending events
        // that are never our response would otherwise be read until the deadline.
        let mut total = 0usize;
        while let Some(chunk) = resp.chunk().await.map_err(body_error)? {
            total = total.saturating_add(chunk.len());
            if total > MAX_BODY_BYTES {
                return Err(FabricError::new(
                    ErrorCategory::Error,
                    format!("{what}: answer too large"),
                ));
            }
            for data in parser.push(&chunk) {
                if let Some(m) = matching_message(&data, id) {
                    return Ok(m);
                }
            }
        }
        parser
            .finish()
            .into_iter()
            .find_map(|data| matching_message(&data, id))
            .ok_or_else(no_answer)
    } else {
        let body = read_body(resp, MAX_BODY_BYTES).await.map_err(body_error)?;
        let text = String::from_utf8_lossy(&body);
        matching_message(&text, id).ok_or_else(no_answer)
    }
}

/// The JSON-RPC response with `id` in `data` (one message or a batch).
fn matching_message(data: &str, id: u64) -> Option<Value> {
    let value: Value = serde_json::from_str(data).ok()?;
    let is_ours = |m: &Value| {
        m.get("id").and_then(Value::as_u64) == Some(id)
            && (m.get("result").is_some() || m.get("error").is_some())
    };
    match value {
        Value::Array(items) => items.into_iter().find(is_ours),
        m if is_ours(&m) => Some(m),
        _ => None,
    }
}

/// Incremental `text/event-stream` parser yielding each event's `data`.
#[derive(Default)]
struct SseParser {
    buffer: String,
    pending: Vec<u8>,
    /// How much of `buffer` is known to hold no event boundary: the next search starts
    /// there, so a large event arriving in small chunks is scanned once, not once per chunk.
    scanned: usize,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        // Only decode complete UTF-8 sequences; keep a split character for the next chunk.
        let mut valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        // Keep a trailing CR too: with the next chunk's LF it is one line end, not two.
        if valid > 0 && self.pending[valid - 1] == b'\r' {
            valid -= 1;
        }
        let decoded: Vec<u8> = self.pending.drain(..valid).collect();
        self.buffer.push_str(
            &String::from_utf8_lossy(&decoded)
                .replace("\r\n", "\n")
                .replace('\r', "\n"),
        );
        let mut events = Vec::new();
        // A boundary may straddle the previous search's end: start one byte earlier when the
        // scanned part ends with a newline (an ASCII byte, so a character boundary).
        let mut from = self.scanned;
        if from > 0 && self.buffer.as_bytes()[from - 1] == b'\n' {
            from -= 1;
        }
        while let Some(at) = self.buffer[from..].find("\n\n") {
            let end = from + at;
            let block: String = self.buffer.drain(..end + 2).collect();
            if let Some(data) = event_data(&block) {
                events.push(data);
            }
            from = 0;
        }
        self.scanned = self.buffer.len();
        events
    }

    fn finish(mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        event_data(&rest)
    }
}

fn event_data(block: &str) -> Option<String> {
    let mut data: Option<String> = None;
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(rest);
                }
                None => data = Some(rest.to_owned()),
            }
        }
    }
    data
}

/// The data agent's tool and its string argument, read from `tools/list`.
fn pick_tool(result: &Value) -> Result<Tool, FabricError> {
    let tools = result
        .get("tools")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let tool = tools
        .iter()
        .find(|t| {
            t.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.starts_with("DataAgent_"))
        })
        .or_else(|| tools.first())
        .ok_or_else(|| FabricError::new(ErrorCategory::Error, "the data agent lists no tool"))?;
    let name = tool.get("name").and_then(Value::as_str).ok_or_else(|| {
        FabricError::new(ErrorCategory::Error, "the data agent's tool has no name")
    })?;
    let schema = tool.get("inputSchema").cloned().unwrap_or(Value::Null);
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let is_string = |p: &str| {
        properties
            .get(p)
            .and_then(|s| s.get("type"))
            .and_then(Value::as_str)
            == Some("string")
    };
    let required: Vec<String> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let argument = required
        .iter()
        .find(|r| is_string(r))
        .cloned()
        .or_else(|| properties.keys().find(|k| is_string(k)).cloned())
        .ok_or_else(|| {
            FabricError::new(
                ErrorCategory::Error,
                "the data agent's tool takes no string argument",
            )
        })?;
    Ok(Tool {
        name: name.to_owned(),
        argument,
    })
}

/// The answer text of a `tools/call` result, or the failure it reports.
fn tool_result_text(result: &Value) -> Result<String, FabricError> {
    let text = content_text(result, "/text");
    let is_error = result.get("isError").and_then(Value::as_bool) == Some(true);
    let json_error = serde_json::from_str::<Value>(text.trim())
        .ok()
        .filter(|v| v.get("error").is_some_and(|e| !e.is_null()));
    if is_error || json_error.is_some() {
        let mut shown: String = text.chars().take(200).collect();
        if text.chars().count() > 200 {
            shown.push('…');
        }
        tracing::warn!(tool_error = %shown, "the data agent's tool reported an error");
        if text.contains("CapacityNotActive") {
            return Err(
                FabricError::new(ErrorCategory::NotFound, "the Fabric capacity is paused")
                    .with_user_message(CAPACITY_PAUSED),
            );
        }
        if text.contains("Stage configuration not found") {
            return Err(FabricError::new(
                ErrorCategory::NotFound,
                "the data agent is not published",
            ));
        }
        return Err(FabricError::new(
            ErrorCategory::Error,
            "the data agent's tool reported an error",
        ));
    }
    if text.trim().is_empty() {
        return Err(FabricError::new(
            ErrorCategory::Error,
            "the data agent gave an empty answer",
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_chunks_and_multiline_data() {
        let mut p = SseParser::default();
        assert!(
            p.push(b": comment\r\nevent: message\r\ndata: {\"a\":")
                .is_empty()
        );
        let events = p.push(b"1}\r\n\r\nid: 7\ndata: line1\ndata: line2\n\n");
        assert_eq!(
            events,
            vec!["{\"a\":1}".to_owned(), "line1\nline2".to_owned()]
        );
        // A multi-byte character split across chunks survives.
        let bytes = "data: é\n\n".as_bytes();
        assert!(p.push(&bytes[..7]).is_empty());
        assert_eq!(p.push(&bytes[7..]), vec!["é".to_owned()]);
        assert!(p.push(b"data: tail").is_empty());
        assert_eq!(p.finish().as_deref(), Some("tail"));
    }

    #[test]
    fn sse_parser_fed_byte_by_byte_finds_every_boundary() {
        let stream = "data: é1\n\n: c\n\ndata: {\"x\":2}\n\ndata: 3\n\n";
        let mut p = SseParser::default();
        let mut events = Vec::new();
        for b in stream.as_bytes() {
            events.extend(p.push(std::slice::from_ref(b)));
        }
        assert_eq!(events, ["é1", "{\"x\":2}", "3"]);
        // A boundary split right after its first newline.
        let mut p = SseParser::default();
        assert!(p.push(b"data: a\n").is_empty());
        assert_eq!(p.push(b"\ndata: b"), ["a"]);
        assert_eq!(p.finish().as_deref(), Some("b"));
        // A CRLF split between chunks is one line end, not an event boundary.
        let mut p = SseParser::default();
        assert!(p.push(b"data: a\r").is_empty());
        assert_eq!(p.push(b"\ndata: b\r\n\r\n"), ["a\nb"]);
    }

    #[test]
    fn matching_message_picks_our_id() {
        assert!(
            matching_message(r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#, 3).is_none()
        );
        assert!(matching_message(r#"{"jsonrpc":"2.0","id":2,"result":{}}"#, 3).is_none());
        let m = matching_message(r#"[{"id":2,"result":1},{"id":3,"result":2}]"#, 3).unwrap();
        assert_eq!(m["result"], 2);
    }

    #[test]
    fn tool_and_argument_come_from_the_schema() {
        let t = pick_tool(&json!({"tools":[
            {"name":"other","inputSchema":{"properties":{"x":{"type":"string"}}}},
            {"name":"DataAgent_Sales","inputSchema":{"type":"object",
              "properties":{"n":{"type":"integer"},"q":{"type":"string"}},"required":["n","q"]}}
        ]}))
        .unwrap();
        assert_eq!(
            (t.name.as_str(), t.argument.as_str()),
            ("DataAgent_Sales", "q")
        );
        assert!(pick_tool(&json!({"tools":[]})).is_err());
        assert!(pick_tool(&json!({"tools":[{"name":"a","inputSchema":{"properties":{"n":{"type":"integer"}}}}]})).is_err());
    }

    #[test]
    fn tool_results() {
        let ok = json!({"content":[{"type":"text","text":"a"},{"type":"image"},{"type":"text","text":"b"}],"isError":false});
        assert_eq!(tool_result_text(&ok).unwrap(), "a\nb");
        let err = json!({"content":[{"type":"text","text":"boom"}],"isError":true});
        assert_eq!(
            tool_result_text(&err).unwrap_err().category(),
            ErrorCategory::Error
        );
        let json_err = json!({"content":[{"type":"text","text":"{\"error\":\"bad\"}"}]});
        assert!(tool_result_text(&json_err).is_err());
        let not_published = json!({"content":[{"type":"text","text":"Stage configuration not found"}],"isError":true});
        assert_eq!(
            tool_result_text(&not_published).unwrap_err().category(),
            ErrorCategory::NotFound
        );
        // JSON that merely mentions null error is an answer.
        let fine = json!({"content":[{"type":"text","text":"{\"error\":null,\"rows\":1}"}]});
        assert!(tool_result_text(&fine).is_ok());
    }
}
