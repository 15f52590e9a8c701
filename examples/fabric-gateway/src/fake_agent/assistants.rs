//! The fake's assistants API: assistants, threads, messages, runs and run steps.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};

use super::controls::FakeControls;
use super::{API_VERSIONS, FAKE_SQL, fabric_error, fake_answer, fake_table};

#[derive(Debug)]
pub(super) struct Message {
    id: String,
    role: String,
    content: String,
    run_id: Option<String>,
    created_at: u64,
}

#[derive(Debug)]
pub(super) struct Run {
    thread_id: String,
    assistant_id: String,
    question: String,
    polls: u32,
    fail: bool,
    status: &'static str,
    steps: Vec<Value>,
    pub(super) input: Vec<(String, String)>,
}

/// The assistants API's routes, relative to `.../aiassistant/openai`; every one checks
/// `api-version`.
pub(super) fn routes() -> Router<FakeControls> {
    Router::new()
        .route("/assistants", post(create_assistant))
        .route("/threads", post(create_thread))
        .route("/threads/{thread}", delete(delete_thread))
        .route(
            "/threads/{thread}/messages",
            post(add_message).get(list_messages),
        )
        .route("/threads/{thread}/runs", post(create_run))
        .route("/threads/{thread}/runs/{run}", get(get_run))
        .route("/threads/{thread}/runs/{run}/steps", get(list_steps))
        .route_layer(middleware::from_fn(check_api_version))
}

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
    let id = if let Some(id) = s.next_thread_id.take() {
        s.threads.insert(id.clone(), Vec::new());
        id
    } else if s.shared_thread {
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
    super::controls::record(&mut s.created_threads, id.clone());
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
    super::controls::record(&mut s.deleted_threads, thread.clone());
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
    super::controls::record(&mut s.run_order, id);
    // Runs are polled right after they are created: keep only the latest ones.
    if s.runs.len() > 2 * super::controls::OBSERVATIONS_KEPT {
        let recent: std::collections::HashSet<String> = s.run_order.iter().cloned().collect();
        s.runs.retain(|id, _| recent.contains(id));
    }
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
