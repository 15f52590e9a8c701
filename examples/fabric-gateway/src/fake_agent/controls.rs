//! Scripting the fake's behaviour and reading what it saw: [`FakeControls`] and the state
//! it shares with the protocol handlers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use super::assistants::{Message, Run};
use super::{DEFAULT_TOOL_ARGUMENT, DEFAULT_TOOL_NAME};

/// How many of its latest observations (requests, RPCs, threads, runs) each list keeps: the
/// built-in agent of local mode may run for days, and every request it records carries a
/// bearer token of about a kilobyte. Tests look at far fewer.
pub(super) const OBSERVATIONS_KEPT: usize = 1024;

/// Appends `item` to an observation list, dropping the oldest half once it holds twice
/// [`OBSERVATIONS_KEPT`] (amortized O(1); at least the latest `OBSERVATIONS_KEPT` stay).
pub(super) fn record<T>(list: &mut Vec<T>, item: T) {
    if list.len() >= 2 * OBSERVATIONS_KEPT {
        list.drain(..list.len() - OBSERVATIONS_KEPT);
    }
    list.push(item);
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
    /// The `X-Correlation-ID` header.
    pub correlation_id: Option<String>,
    /// The `Authorization` header (tests check it is the user's token).
    pub authorization: Option<String>,
    /// The `Mcp-Session-Id` header.
    pub mcp_session_id: Option<String>,
    /// The `MCP-Protocol-Version` header.
    pub mcp_protocol_version: Option<String>,
    /// The W3C `traceparent` header (sent when the gateway exports traces).
    pub traceparent: Option<String>,
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
pub(super) struct FakeState {
    // knobs
    pub(super) mcp_mode: McpResponseMode,
    pub(super) mcp_sessions: bool,
    pub(super) lose_sessions_on_tool_call: u32,
    pub(super) tool_name: String,
    pub(super) tool_argument: String,
    pub(super) tool_failures: Vec<ToolFailure>,
    pub(super) status_failures: Vec<(u16, Option<String>)>,
    pub(super) rate_limits: Vec<u64>,
    pub(super) answer_delay: Duration,
    pub(super) failing_runs: u32,
    pub(super) shared_thread: bool,
    pub(super) next_thread_id: Option<String>,
    pub(super) required_token: Option<String>,
    // protocol state
    pub(super) sessions: HashMap<String, ()>,
    pub(super) threads: HashMap<String, Vec<Message>>,
    pub(super) runs: HashMap<String, Run>,
    // observations
    pub(super) requests: Vec<RecordedRequest>,
    pub(super) rpcs: Vec<RecordedRpc>,
    pub(super) deleted_threads: Vec<String>,
    pub(super) created_threads: Vec<String>,
    pub(super) run_order: Vec<String>,
    pub(super) next_id: u64,
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
            next_thread_id: None,
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
    pub(super) fn new_id(&mut self, prefix: &str) -> String {
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
    pub(super) fn lock(&self) -> MutexGuard<'_, FakeState> {
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

    /// Give the next created thread this id, verbatim (a hostile or broken agent's id).
    pub fn set_next_thread_id(&self, id: &str) {
        self.lock().next_thread_id = Some(id.to_owned());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_lists_keep_the_latest_entries_only() {
        let mut list = Vec::new();
        for i in 0..10 * OBSERVATIONS_KEPT {
            record(&mut list, i);
            assert!(list.len() <= 2 * OBSERVATIONS_KEPT);
        }
        // The latest OBSERVATIONS_KEPT are all there, in order.
        let tail = &list[list.len() - OBSERVATIONS_KEPT..];
        let expected: Vec<usize> = (9 * OBSERVATIONS_KEPT..10 * OBSERVATIONS_KEPT).collect();
        assert_eq!(tail, &expected[..]);
    }
}
