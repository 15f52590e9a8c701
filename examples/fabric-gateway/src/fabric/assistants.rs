//! The data agent's older OpenAI-Assistants-style API (`.../aiassistant/openai`).
//!
//! assistant → thread → history replay + question → run → poll → the run's own messages
//! (selected by `run_id`, never "the newest assistant message": the service may hand
//! every caller the same thread) → run steps when details are asked → thread deleted in
//! the background. A thread stuck so that its run fails with `server_error` before any
//! tool call is replaced once: deleted, recreated, messages replayed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, Url};
use serde_json::{Value, json};

use super::error::{ErrorCategory, FabricError};
use super::history::{ChatMessage, replay, table_lines};
use super::transport::{Call, MAX_BODY_BYTES, Transport, read_body};
use super::{Answer, content_text};

/// How many pages of thread messages are read looking for the run's answer.
const MAX_MESSAGE_PAGES: usize = 5;

/// Threads created by one question, deleted when it ends (however it ends).
#[derive(Clone, Debug, Default)]
pub(crate) struct Threads(Arc<Mutex<Vec<String>>>);

impl Threads {
    fn add(&self, id: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.to_owned());
    }

    fn remove(&self, id: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|t| t != id);
    }

    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[derive(Clone, Debug)]
pub(crate) struct AssistantsClient {
    base: Url,
    api_version: String,
    transport: Transport,
    poll_interval: Duration,
}

impl AssistantsClient {
    pub(crate) fn new(
        base: Url,
        api_version: String,
        transport: Transport,
        poll_interval: Duration,
    ) -> Self {
        Self {
            base,
            api_version,
            transport,
            poll_interval,
        }
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}/{}", url.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "api-version")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        {
            let mut q = url.query_pairs_mut();
            q.clear();
            for (k, v) in &kept {
                q.append_pair(k, v);
            }
            q.append_pair("api-version", &self.api_version);
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        url
    }

    async fn call_json(
        &self,
        call: &Call,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, FabricError> {
        let url = self.url(path, query);
        let mut resp = self
            .transport
            .send(call, what, None, || {
                let req = self
                    .transport
                    .client
                    .reqwest()
                    .request(method.clone(), url.clone())
                    .header(http::header::ACCEPT, "application/json");
                match body {
                    Some(b) => req.json(b),
                    None => req,
                }
            })
            .await?;
        let bytes = read_body(&mut resp, MAX_BODY_BYTES)
            .await
            .map_err(|e| call.body_error(what, &e))?;
        serde_json::from_slice(&bytes).map_err(|_| {
            FabricError::new(
                ErrorCategory::Error,
                format!("{what}: the data agent's answer is not JSON"),
            )
        })
    }

    pub(crate) async fn ask(
        &self,
        call: &Call,
        question: &str,
        history: &[ChatMessage],
        detailed: bool,
        threads: &Threads,
    ) -> Result<Answer, FabricError> {
        let messages = replay(history, question);
        let assistant = self
            .call_json(
                call,
                Method::POST,
                "assistants",
                &[],
                Some(&json!({"model": "not used"})),
                "create assistant",
            )
            .await?;
        let assistant_id = id_of(&assistant, "create assistant")?;

        let mut recovered = false;
        let (thread_id, run) = loop {
            let thread = self
                .call_json(
                    call,
                    Method::POST,
                    "threads",
                    &[],
                    Some(&json!({})),
                    "create thread",
                )
                .await?;
            let thread_id = id_of(&thread, "create thread")?;
            threads.add(&thread_id);
            for m in &messages {
                self.call_json(
                    call,
                    Method::POST,
                    &format!("threads/{thread_id}/messages"),
                    &[],
                    Some(&json!({"role": m.role.as_str(), "content": m.content})),
                    "add message",
                )
                .await?;
            }
            let run = self
                .call_json(
                    call,
                    Method::POST,
                    &format!("threads/{thread_id}/runs"),
                    &[],
                    Some(&json!({"assistant_id": assistant_id})),
                    "create run",
                )
                .await?;
            let run_id = id_of(&run, "create run")?;
            let run = self.poll(call, &thread_id, &run_id).await?;
            let status = run.get("status").and_then(Value::as_str).unwrap_or("");
            if status == "completed" {
                break (thread_id, run);
            }
            let code = run
                .pointer("/last_error/code")
                .and_then(Value::as_str)
                .unwrap_or("");
            if status == "failed"
                && code == "server_error"
                && !recovered
                && !self.made_tool_calls(call, &thread_id, &run_id).await
            {
                tracing::warn!(
                    "data agent run failed before any tool call; replacing the stuck thread once"
                );
                recovered = true;
                self.delete_thread(call, &thread_id).await;
                threads.remove(&thread_id);
                continue;
            }
            return Err(run_failure(status, code));
        };
        let run_id = id_of(&run, "run")?;

        let texts = self.answer_texts(call, &thread_id, &run_id).await?;
        if texts.is_empty() {
            return Err(FabricError::new(
                ErrorCategory::Error,
                "the run completed without an answer message",
            ));
        }
        let text = texts.join("\n\n");
        let mut answer = Answer {
            run_status: Some("completed".to_owned()),
            steps_count: 0,
            messages_count: messages.len() + texts.len(),
            sql_query: None,
            data_preview: None,
            text,
        };
        if detailed {
            let steps = self
                .call_json(
                    call,
                    Method::GET,
                    &format!("threads/{thread_id}/runs/{run_id}/steps"),
                    &[("order", "asc")],
                    None,
                    "list run steps",
                )
                .await?;
            let steps = steps
                .get("data")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            answer.steps_count = steps.len();
            let (sql, preview) = step_details(&steps);
            answer.sql_query = sql;
            let preview = if preview.is_empty() {
                table_lines(&answer.text)
            } else {
                preview
            };
            answer.data_preview = (!preview.is_empty()).then_some(preview);
        }
        Ok(answer)
    }

    async fn poll(&self, call: &Call, thread_id: &str, run_id: &str) -> Result<Value, FabricError> {
        let path = format!("threads/{thread_id}/runs/{run_id}");
        loop {
            let run = self
                .call_json(call, Method::GET, &path, &[], None, "get run")
                .await?;
            match run.get("status").and_then(Value::as_str) {
                Some("queued" | "in_progress" | "cancelling") => {
                    let wait = self.poll_interval.min(call.remaining());
                    if wait.is_zero() {
                        return Err(call.timeout_error("waiting for the run"));
                    }
                    tokio::time::sleep(wait).await;
                }
                _ => return Ok(run),
            }
        }
    }

    /// Whether the run got as far as a tool call (then its thread is not "stuck").
    async fn made_tool_calls(&self, call: &Call, thread_id: &str, run_id: &str) -> bool {
        match self
            .call_json(
                call,
                Method::GET,
                &format!("threads/{thread_id}/runs/{run_id}/steps"),
                &[],
                None,
                "list run steps",
            )
            .await
        {
            Ok(steps) => steps
                .get("data")
                .and_then(Value::as_array)
                .is_some_and(|s| {
                    s.iter()
                        .any(|step| step.get("type").and_then(Value::as_str) == Some("tool_calls"))
                }),
            Err(_) => false,
        }
    }

    /// The texts of the assistant messages of `run_id`, oldest first.
    async fn answer_texts(
        &self,
        call: &Call,
        thread_id: &str,
        run_id: &str,
    ) -> Result<Vec<String>, FabricError> {
        let path = format!("threads/{thread_id}/messages");
        let mut after: Option<String> = None;
        let mut found = Vec::new();
        for _ in 0..MAX_MESSAGE_PAGES {
            let mut query = vec![("order", "desc"), ("limit", "100")];
            if let Some(a) = &after {
                query.push(("after", a.as_str()));
            }
            let page = self
                .call_json(call, Method::GET, &path, &query, None, "list messages")
                .await?;
            let data = page
                .get("data")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for m in &data {
                let ours = m.get("role").and_then(Value::as_str) == Some("assistant")
                    && m.get("run_id").and_then(Value::as_str) == Some(run_id);
                if ours {
                    found.push(content_text(m, "/text/value"));
                }
            }
            let has_more = page.get("has_more").and_then(Value::as_bool) == Some(true);
            after = page
                .get("last_id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if !found.is_empty() || !has_more || after.is_none() {
                break;
            }
        }
        found.reverse();
        Ok(found.into_iter().filter(|t| !t.trim().is_empty()).collect())
    }

    /// Deletes a thread, ignoring failures.
    pub(crate) async fn delete_thread(&self, call: &Call, thread_id: &str) {
        let result = self
            .call_json(
                call,
                Method::DELETE,
                &format!("threads/{thread_id}"),
                &[],
                None,
                "delete thread",
            )
            .await;
        if let Err(e) = result {
            tracing::info!(
                category = e.category().as_str(),
                "could not delete a data agent thread"
            );
        }
    }
}

/// The longest id taken from the data agent's answers.
const MAX_ID_LEN: usize = 128;

/// The `id` of one of the data agent's answers, checked before it goes into URL paths:
/// `[A-Za-z0-9_-]{1,128}` only (no `.`, so no `..` segment; no `/`, `?`, `%`).
fn id_of(value: &Value, what: &str) -> Result<String, FabricError> {
    value
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| {
            (1..=MAX_ID_LEN).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .ok_or_else(|| {
            FabricError::new(
                ErrorCategory::Error,
                format!("{what}: the answer has no valid id"),
            )
        })
}

fn run_failure(status: &str, code: &str) -> FabricError {
    let category = match (status, code) {
        ("failed", "server_error") => ErrorCategory::ServerError,
        ("failed", "rate_limit_exceeded") => ErrorCategory::RateLimit,
        ("expired", _) => ErrorCategory::Timeout,
        _ => ErrorCategory::Error,
    };
    let code = super::error::sanitize_code(code);
    let mut detail = format!("the data agent's run ended with status {status:?}");
    if let Some(c) = &code {
        detail.push_str(&format!(" ({c})"));
    }
    FabricError::new(category, detail).with_codes(code, None)
}

/// The first SQL/DAX query found in the tool calls' arguments, and up to 10 markdown
/// table lines of their outputs.
fn step_details(steps: &[Value]) -> (Option<String>, Vec<String>) {
    let mut sql = None;
    let mut preview = Vec::new();
    let calls = steps
        .iter()
        .filter_map(|s| {
            s.pointer("/step_details/tool_calls")
                .and_then(Value::as_array)
        })
        .flatten()
        .filter_map(|c| c.get("function"));
    for function in calls {
        if sql.is_none() {
            sql = function
                .get("arguments")
                .and_then(Value::as_str)
                .and_then(query_from_arguments);
        }
        if preview.len() < 10
            && let Some(output) = function.get("output").and_then(Value::as_str)
        {
            let mut strings = Vec::new();
            match serde_json::from_str::<Value>(output) {
                Ok(v) => collect_strings(&v, &mut strings),
                Err(_) => strings.push(output.to_owned()),
            }
            for line in strings.iter().flat_map(|s| table_lines(s)) {
                if preview.len() < 10 {
                    preview.push(line);
                }
            }
        }
    }
    (sql, preview)
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        Value::Object(map) => map.values().for_each(|i| collect_strings(i, out)),
        _ => {}
    }
}

/// The query in a tool call's `arguments` (a JSON string): the fenced code of its `code`
/// field (or of any string in it), else `code` itself.
fn query_from_arguments(arguments: &str) -> Option<String> {
    let parsed: Option<Value> = serde_json::from_str(arguments).ok();
    let mut candidates = Vec::new();
    match &parsed {
        Some(v) => {
            if let Some(code) = v.get("code").and_then(Value::as_str) {
                candidates.push(code.to_owned());
            }
            collect_strings(v, &mut candidates);
        }
        None => candidates.push(arguments.to_owned()),
    }
    candidates.iter().find_map(|c| fenced_code(c)).or_else(|| {
        parsed
            .as_ref()?
            .get("code")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
    })
}

/// The body of the first fenced code block (```sql ... ```).
fn fenced_code(text: &str) -> Option<String> {
    let start = text.find("```")?;
    let after = &text[start + 3..];
    let body_start = after.find('\n').map(|i| i + 1)?;
    let body = &after[body_start..];
    let end = body.find("```").unwrap_or(body.len());
    let code = body[..end].trim();
    (!code.is_empty()).then(|| code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_read_from_fenced_code() {
        let args = r#"{"code": "```sql\nSELECT 1\nFROM t\n```", "other": 1}"#;
        assert_eq!(
            query_from_arguments(args).as_deref(),
            Some("SELECT 1\nFROM t")
        );
        let plain = r#"{"code": "EVALUATE Sales"}"#;
        assert_eq!(
            query_from_arguments(plain).as_deref(),
            Some("EVALUATE Sales")
        );
        assert_eq!(query_from_arguments(r#"{"x": 1}"#), None);
    }

    #[test]
    fn step_details_read_sql_and_preview() {
        let table: String = (0..12).map(|i| format!("| {i} |\n")).collect();
        let steps = vec![
            json!({"type": "message_creation"}),
            json!({"type": "tool_calls", "step_details": {"tool_calls": [{"function": {
                "name": "analyze", "arguments": "{\"code\":\"```sql\\nSELECT 2\\n```\"}",
                "output": serde_json::to_string(&json!({"result": table})).unwrap()}}]}}),
        ];
        let (sql, preview) = step_details(&steps);
        assert_eq!(sql.as_deref(), Some("SELECT 2"));
        assert_eq!(preview.len(), 10);
        assert_eq!(preview[0], "| 0 |");
    }

    #[test]
    fn run_failures_map_to_categories() {
        assert_eq!(
            run_failure("failed", "server_error").category(),
            ErrorCategory::ServerError
        );
        assert_eq!(
            run_failure("failed", "rate_limit_exceeded").category(),
            ErrorCategory::RateLimit
        );
        assert_eq!(
            run_failure("expired", "").category(),
            ErrorCategory::Timeout
        );
        assert_eq!(
            run_failure("requires_action", "").category(),
            ErrorCategory::Error
        );
    }
}
