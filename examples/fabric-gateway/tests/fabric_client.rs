//! The data agent client against the fake data agent, over real HTTP on loopback.

use std::time::{Duration, Instant};

use fabric_gateway::fabric::{
    ChatMessage, DataAgent, DataAgentOptions, DataAgentProtocol, ErrorCategory, FabricError,
};
use fabric_gateway::fake_agent::{
    FAKE_SQL, FakeAgent, FakeAgentHandle, McpResponseMode, RecordedRpc, ToolFailure, fake_answer,
};

const TOKEN: &str = "user-token-abc123";
const CORRELATION: &str = "corr-0192-test";

fn options(url: String) -> DataAgentOptions {
    DataAgentOptions::new(url)
        .poll_interval(Duration::from_millis(10))
        .retry_backoff(Duration::from_millis(10))
        .timeout(Duration::from_secs(10))
}

async fn mcp() -> (FakeAgentHandle, DataAgent) {
    let fake = FakeAgent::start().await.unwrap();
    let agent = DataAgent::new(options(fake.mcp_url())).unwrap();
    assert_eq!(agent.protocol(), DataAgentProtocol::Mcp);
    (fake, agent)
}

async fn assistants() -> (FakeAgentHandle, DataAgent) {
    let fake = FakeAgent::start().await.unwrap();
    let agent = DataAgent::new(options(fake.assistants_url())).unwrap();
    assert_eq!(agent.protocol(), DataAgentProtocol::Assistants);
    (fake, agent)
}

async fn ask(
    agent: &DataAgent,
    question: &str,
) -> Result<fabric_gateway::fabric::Answer, FabricError> {
    agent.ask(question, &[], TOKEN, CORRELATION, true).await
}

/// The fake's URL for `protocol`.
fn url_for(fake: &FakeAgentHandle, protocol: DataAgentProtocol) -> String {
    match protocol {
        DataAgentProtocol::Mcp => fake.mcp_url(),
        DataAgentProtocol::Assistants => fake.assistants_url(),
    }
}

/// The last `tools/call` the fake received.
fn last_tool_call(fake: &FakeAgentHandle) -> RecordedRpc {
    fake.controls
        .rpcs()
        .into_iter()
        .rev()
        .find(|r| r.method == "tools/call")
        .expect("a tools/call")
}

/// Waits (bounded) for an effect of a background task.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Nothing the user or the logs' error field sees contains the token or the upstream's
/// internal message.
fn assert_clean(e: &FabricError) {
    for text in [
        e.error_string(),
        e.user_message().to_owned(),
        format!("{e:?}"),
    ] {
        assert!(!text.contains(TOKEN), "token leaked: {text}");
        assert!(
            !text.contains("internal detail"),
            "upstream message leaked: {text}"
        );
    }
    assert!(
        e.error_string()
            .starts_with(&format!("FABRIC_{}: ", e.category().as_str()))
    );
}

// ------------------------------------------------------------------------------- MCP

#[tokio::test]
async fn mcp_json_with_sessions_end_to_end() {
    let (fake, agent) = mcp().await;
    let answer = ask(&agent, "How many orders?").await.unwrap();
    assert_eq!(answer.text, fake_answer("How many orders?"));
    assert_eq!(answer.run_status.as_deref(), Some("completed"));
    assert_eq!(answer.steps_count, 0);
    assert_eq!(answer.sql_query, None);
    assert_eq!(answer.messages_count, 2);

    let methods: Vec<String> = fake
        .controls
        .rpcs()
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(
        methods,
        [
            "initialize",
            "notifications/initialized",
            "tools/list",
            "tools/call"
        ]
    );
    let requests = fake.controls.requests();
    let posts: Vec<_> = requests.iter().filter(|r| r.method == "POST").collect();
    for r in &posts {
        assert_eq!(r.activity_id.as_deref(), Some(CORRELATION));
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
    // initialize carries neither session nor version; everything after carries both.
    assert_eq!(posts[0].mcp_session_id, None);
    assert_eq!(posts[0].mcp_protocol_version, None);
    let sid = posts[1]
        .mcp_session_id
        .clone()
        .expect("session id sent after initialize");
    for r in &posts[1..] {
        assert_eq!(r.mcp_session_id.as_ref(), Some(&sid));
        assert_eq!(r.mcp_protocol_version.as_deref(), Some("2025-06-18"));
    }
    // The session is ended in the background.
    eventually("the session DELETE", || {
        fake.controls.mcp_session_count() == 0
    })
    .await;
}

#[tokio::test]
async fn mcp_sse_with_and_without_sessions() {
    let (fake, agent) = mcp().await;
    fake.controls.set_mcp_response_mode(McpResponseMode::Sse);
    let answer = ask(&agent, "SSE with session").await.unwrap();
    assert_eq!(answer.text, fake_answer("SSE with session"));

    fake.controls.set_mcp_sessions(false);
    let answer = ask(&agent, "SSE sessionless").await.unwrap();
    assert_eq!(answer.text, fake_answer("SSE sessionless"));
    let last_call = last_tool_call(&fake);
    assert_eq!(last_call.session_id, None);

    fake.controls.set_mcp_response_mode(McpResponseMode::Json);
    let answer = ask(&agent, "JSON sessionless").await.unwrap();
    assert_eq!(answer.text, fake_answer("JSON sessionless"));
}

#[tokio::test]
async fn mcp_tool_is_read_from_tools_list_and_cached() {
    let (fake, agent) = mcp().await;
    fake.controls.set_tool("DataAgent_Finance", "question");
    assert_eq!(ask(&agent, "one").await.unwrap().text, fake_answer("one"));
    assert_eq!(ask(&agent, "two").await.unwrap().text, fake_answer("two"));
    assert_eq!(fake.controls.rpc_count("tools/list"), 1);
    let call = last_tool_call(&fake);
    assert_eq!(call.params["name"], "DataAgent_Finance");
    assert_eq!(call.params["arguments"]["question"], "two");
}

#[tokio::test]
async fn mcp_history_is_folded_and_bounded() {
    let (fake, agent) = mcp().await;
    let history: Vec<ChatMessage> = (0..14)
        .map(|i| {
            if i % 2 == 0 {
                ChatMessage::user(format!("question {i}"))
            } else {
                ChatMessage::assistant(format!("answer {i}"))
            }
        })
        .collect();
    let answer = agent
        .ask("And now?", &history, TOKEN, CORRELATION, false)
        .await
        .unwrap();
    let call = last_tool_call(&fake); // the only one
    let sent = call.params["arguments"]["userQuestion"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(answer.text, fake_answer(&sent));
    assert!(
        sent.starts_with("Conversation so far:\nUser: question 2\n"),
        "{sent}"
    );
    assert!(!sent.contains("question 0") && !sent.contains("answer 1\n"));
    assert!(
        sent.ends_with("Assistant: answer 13\n\nCurrent question: And now?"),
        "{sent}"
    );
    assert_eq!(answer.messages_count, 14);
}

#[tokio::test]
async fn mcp_lost_session_is_reinitialized_once() {
    let (fake, agent) = mcp().await;
    fake.controls.lose_session_on_next_tool_calls(1);
    let answer = ask(&agent, "after a lost session").await.unwrap();
    assert_eq!(answer.text, fake_answer("after a lost session"));
    assert_eq!(fake.controls.rpc_count("initialize"), 2);
    assert_eq!(fake.controls.rpc_count("tools/call"), 2);

    // Lost again right after re-initializing: reported, not looped.
    fake.controls.lose_session_on_next_tool_calls(2);
    let e = ask(&agent, "lost twice").await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Error);
    assert_eq!(fake.controls.rpc_count("initialize"), 4);
    assert_clean(&e);
}

#[tokio::test]
async fn mcp_sessions_forgotten_between_questions_do_not_matter() {
    let (fake, agent) = mcp().await;
    ask(&agent, "first").await.unwrap();
    fake.controls.forget_mcp_sessions();
    assert_eq!(
        ask(&agent, "second").await.unwrap().text,
        fake_answer("second")
    );
}

#[tokio::test]
async fn mcp_tool_failures() {
    let (fake, agent) = mcp().await;
    fake.controls.fail_next_tool_call(ToolFailure::IsError(
        "Query failed: internal detail".to_owned(),
    ));
    let e = ask(&agent, "q").await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Error);
    assert_clean(&e);

    fake.controls
        .fail_next_tool_call(ToolFailure::JsonErrorText);
    let e = ask(&agent, "q").await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Error);
    assert_clean(&e);

    fake.controls.fail_next_tool_call(ToolFailure::IsError(
        "Stage configuration not found".to_owned(),
    ));
    let e = ask(&agent, "q").await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::NotFound);

    // A JSON-RPC error is a protocol failure; the tool list is read again afterwards.
    assert_eq!(fake.controls.rpc_count("tools/list"), 1);
    fake.controls.fail_next_tool_call(ToolFailure::JsonRpcError);
    let e = ask(&agent, "q").await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Error);
    assert!(
        e.error_string().contains("JSON-RPC error"),
        "{}",
        e.error_string()
    );
    assert_eq!(ask(&agent, "fine").await.unwrap().text, fake_answer("fine"));
    assert_eq!(fake.controls.rpc_count("tools/list"), 2);
}

// ------------------------------------------------------------------ failure categories

async fn category_for(
    fake: &FakeAgentHandle,
    agent: &DataAgent,
    status: u16,
    code: Option<&str>,
) -> FabricError {
    fake.controls.fail_next_requests(1, status, code);
    let e = ask(agent, "q").await.unwrap_err();
    assert_clean(&e);
    assert_eq!(e.status(), Some(status));
    e
}

#[tokio::test]
async fn http_statuses_map_to_categories_for_both_protocols() {
    for (fake, agent) in [mcp().await, assistants().await] {
        let e = category_for(&fake, &agent, 401, Some("Unauthorized")).await;
        assert_eq!(e.category(), ErrorCategory::AuthError);
        assert_eq!(e.error_code(), Some("Unauthorized"));
        assert!(e.request_id().is_some(), "Fabric's requestId is kept");
        let e = category_for(&fake, &agent, 401, Some("TokenExpired")).await;
        assert_eq!(e.category(), ErrorCategory::TokenExpired);
        let e = category_for(&fake, &agent, 403, Some("Forbidden")).await;
        assert_eq!(e.category(), ErrorCategory::PermissionError);
        let e = category_for(&fake, &agent, 404, Some("EntityNotFound")).await;
        assert_eq!(e.category(), ErrorCategory::NotFound);
        let e = category_for(&fake, &agent, 404, Some("CapacityNotActive")).await;
        assert_eq!(e.category(), ErrorCategory::NotFound);
        assert!(
            e.user_message().contains("capacity"),
            "{}",
            e.user_message()
        );
        let e = category_for(&fake, &agent, 400, Some("BadRequest")).await;
        assert_eq!(e.category(), ErrorCategory::Error);

        // 5xx: two retries, then SERVER_ERROR.
        let before = fake.controls.requests().len();
        fake.controls
            .fail_next_requests(3, 500, Some("InternalError"));
        let e = ask(&agent, "q").await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::ServerError);
        assert_clean(&e);
        assert_eq!(
            fake.controls.requests().len() - before,
            3,
            "1 attempt + 2 retries"
        );
        // One 5xx is retried away.
        fake.controls.fail_next_requests(1, 503, None);
        assert_eq!(
            ask(&agent, "retried").await.unwrap().text,
            fake_answer("retried")
        );

        // A token the agent does not accept.
        fake.controls.set_required_token(Some("someone-else"));
        let e = ask(&agent, "q").await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::AuthError);
        assert_clean(&e);
    }
}

#[tokio::test]
async fn empty_token_is_refused_before_any_request() {
    let (fake, agent) = mcp().await;
    let e = agent
        .ask("q", &[], "  ", CORRELATION, false)
        .await
        .unwrap_err();
    assert_eq!(e.category(), ErrorCategory::AuthError);
    assert!(fake.controls.requests().is_empty());
}

#[tokio::test]
async fn unreachable_agent_is_a_connection_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("http://127.0.0.1:{port}/v1/mcp/workspaces/w/dataagents/a/agent");
    let agent = DataAgent::new(options(url)).unwrap();
    let e = ask(&agent, "q").await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::ConnectionError);
    assert_clean(&e);
}

#[tokio::test]
async fn rate_limit_is_waited_out_within_the_deadline_else_reported() {
    for (fake, agent) in [mcp().await, assistants().await] {
        fake.controls.rate_limit_next_requests(1, 1);
        let start = Instant::now();
        let answer = ask(&agent, "throttled").await.unwrap();
        assert_eq!(answer.text, fake_answer("throttled"));
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "Retry-After honoured"
        );

        // Retry-After beyond the deadline: reported at once, not waited for.
        let agent = DataAgent::new(
            options(url_for(&fake, agent.protocol())).timeout(Duration::from_secs(3)),
        )
        .unwrap();
        fake.controls.rate_limit_next_requests(1, 30);
        let start = Instant::now();
        let e = ask(&agent, "q").await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::RateLimit);
        assert_eq!(e.error_code(), Some("RequestBlocked"));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_clean(&e);
    }
}

#[tokio::test]
async fn deadline_exceeded_is_a_timeout() {
    for (fake, agent) in [mcp().await, assistants().await] {
        let url = url_for(&fake, agent.protocol());
        let agent = DataAgent::new(options(url).timeout(Duration::from_millis(400))).unwrap();
        fake.controls.set_answer_delay(Duration::from_secs(5));
        let start = Instant::now();
        let e = ask(&agent, "slow").await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Timeout, "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "deadline kept: {:?}",
            start.elapsed()
        );
        assert_clean(&e);
        fake.controls.set_answer_delay(Duration::ZERO);
        if agent.protocol() == DataAgentProtocol::Assistants {
            // The abandoned thread is still deleted (in the background).
            eventually("thread deletion", || {
                fake.controls.deleted_threads().len() == 1
            })
            .await;
        }
    }
}

// ------------------------------------------------------------------------ assistants

#[tokio::test]
async fn assistants_end_to_end_with_details() {
    let (fake, agent) = assistants().await;
    let answer = ask(&agent, "Sales by region?").await.unwrap();
    assert_eq!(answer.text, fake_answer("Sales by region?"));
    assert_eq!(answer.run_status.as_deref(), Some("completed"));
    assert_eq!(answer.sql_query.as_deref(), Some(FAKE_SQL));
    let preview = answer.data_preview.unwrap();
    assert_eq!(preview.len(), 10);
    assert_eq!(preview[0], "| region | total |");
    assert_eq!(answer.steps_count, 2);
    assert_eq!(answer.messages_count, 2);

    for r in fake.controls.requests() {
        assert!(
            r.query
                .unwrap_or_default()
                .contains("api-version=2024-05-01-preview")
        );
        assert_eq!(r.activity_id.as_deref(), Some(CORRELATION));
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
    let created = fake.controls.created_threads();
    assert_eq!(created.len(), 1);
    eventually("thread deletion", || {
        fake.controls.deleted_threads() == created
    })
    .await;

    // Without details, no steps are read.
    let before = fake.controls.requests().len();
    let answer = agent
        .ask("Plain", &[], TOKEN, CORRELATION, false)
        .await
        .unwrap();
    assert_eq!(answer.sql_query, None);
    assert_eq!(answer.steps_count, 0);
    let steps_reads = fake.controls.requests()[before..]
        .iter()
        .filter(|r| r.path.ends_with("/steps"))
        .count();
    assert_eq!(steps_reads, 0);
}

#[tokio::test]
async fn assistants_history_is_replayed_within_bounds() {
    let (fake, agent) = assistants().await;
    let mut history: Vec<ChatMessage> = (0..13)
        .map(|i| ChatMessage::user(format!("old {i}")))
        .collect();
    history.push(ChatMessage::assistant("x".repeat(7990)));
    let answer = agent
        .ask("New question", &history, TOKEN, CORRELATION, false)
        .await
        .unwrap();
    assert_eq!(answer.text, fake_answer("New question"));
    let input = fake.controls.last_run_input();
    // 12 newest = "old 2".."old 12" + the long one; 8000 chars force dropping the oldest.
    let total: usize = input[..input.len() - 1]
        .iter()
        .map(|(_, c)| c.chars().count())
        .sum();
    assert!(total <= 8000, "{total}");
    assert_eq!(
        input.last().unwrap(),
        &("user".to_owned(), "New question".to_owned())
    );
    assert_eq!(input[input.len() - 2].0, "assistant");
    assert!(input.len() < 13);
    assert_eq!(answer.messages_count, input.len() + 1);
}

#[tokio::test]
async fn assistants_shared_thread_answer_is_chosen_by_run_id() {
    let (fake, agent) = assistants().await;
    fake.controls.set_shared_thread(true);
    let answer = ask(&agent, "Mine?").await.unwrap();
    assert_eq!(answer.text, fake_answer("Mine?"));
    assert!(!answer.text.contains("Another user"));
}

#[tokio::test]
async fn assistants_stuck_thread_is_replaced_once() {
    let (fake, agent) = assistants().await;
    let history = vec![
        ChatMessage::user("earlier"),
        ChatMessage::assistant("reply"),
    ];
    fake.controls.fail_next_runs(1);
    let answer = agent
        .ask("Recover?", &history, TOKEN, CORRELATION, false)
        .await
        .unwrap();
    assert_eq!(answer.text, fake_answer("Recover?"));
    let created = fake.controls.created_threads();
    assert_eq!(created.len(), 2, "a new thread after the stuck one");
    assert_eq!(fake.controls.runs_created(), 2);
    // The replacement thread got the whole conversation again.
    let input = fake.controls.last_run_input();
    let expected: Vec<(String, String)> = [
        ("user", "earlier"),
        ("assistant", "reply"),
        ("user", "Recover?"),
    ]
    .iter()
    .map(|(r, c)| (r.to_string(), c.to_string()))
    .collect();
    assert_eq!(input, expected);
    eventually("both threads deleted", || {
        let mut d = fake.controls.deleted_threads();
        d.sort();
        d == created
    })
    .await;

    // Stuck twice: one recovery only, then SERVER_ERROR.
    fake.controls.fail_next_runs(2);
    let e = ask(&agent, "Still stuck").await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::ServerError);
    assert_eq!(fake.controls.runs_created(), 4);
    assert_clean(&e);
}

#[tokio::test]
async fn assistants_api_version_is_sent_and_checked() {
    let fake = FakeAgent::start().await.unwrap();
    let agent =
        DataAgent::new(options(fake.assistants_url()).api_version("2024-02-15-preview")).unwrap();
    assert_eq!(ask(&agent, "v").await.unwrap().text, fake_answer("v"));
    assert!(
        fake.controls.requests()[0]
            .query
            .as_deref()
            .unwrap()
            .contains("api-version=2024-02-15-preview")
    );

    let agent = DataAgent::new(options(fake.assistants_url()).api_version("1999-01-01")).unwrap();
    let e = ask(&agent, "v").await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Error);
    assert_eq!(e.error_code(), Some("UnsupportedApiVersion"));
}

#[tokio::test]
async fn protocol_is_chosen_by_url_or_option() {
    assert!(DataAgent::new(DataAgentOptions::new("https://example.com/agent-x")).is_err());
    assert!(DataAgent::new(DataAgentOptions::new("ftp://example.com/v1/mcp/x")).is_err());
    let forced = DataAgent::new(
        DataAgentOptions::new("https://example.com/custom").protocol(DataAgentProtocol::Assistants),
    )
    .unwrap();
    assert_eq!(forced.protocol(), DataAgentProtocol::Assistants);
}

/// Ids from the data agent's JSON go into URL paths: only `[A-Za-z0-9_-]{1,128}` is used,
/// anything else (a path traversal, a query, an overlong id) is an error of category ERROR,
/// before any request to a path built from it.
#[tokio::test]
async fn assistants_ids_that_are_not_plain_tokens_are_refused() {
    let (fake, agent) = assistants().await;
    let long = "a".repeat(129);
    for id in [
        "..",
        ".",
        "../x",
        "a/b?c",
        "a%2Fb",
        "a.b",
        "",
        long.as_str(),
    ] {
        fake.controls.set_next_thread_id(id);
        let before = fake.controls.requests().len();
        let e = ask(&agent, "Where?").await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Error, "{id:?}: {e}");
        let later: Vec<String> = fake.controls.requests()[before..]
            .iter()
            .map(|r| r.path.clone())
            .collect();
        assert!(
            later
                .iter()
                .all(|p| p.ends_with("/assistants") || p.ends_with("/threads")),
            "{id:?}: {later:?}"
        );
    }
    // The longest valid id is used.
    let longest = "t".repeat(128);
    fake.controls.set_next_thread_id(&longest);
    let answer = ask(&agent, "Fine?").await.unwrap();
    assert_eq!(answer.text, fake_answer("Fine?"));
}

/// An MCP server whose SSE answer never ends (notifications forever, never our response): the
/// reader stops after the body limit (8 MiB) with an error of category ERROR, well before the
/// call's timeout, instead of reading until the timeout (or forever without one).
#[tokio::test]
async fn an_endless_mcp_event_stream_is_cut_at_the_body_limit() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = [0u8; 8192];
                let _ = socket.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                            transfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let event = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n";
                let body = event.repeat(16 * 1024 / event.len());
                let chunk = format!("{:x}\r\n{body}\r\n", body.len());
                // At most 256 MiB, so that a reader without a limit fails rather than hangs.
                for _ in 0..16 * 1024 {
                    if socket.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let url = format!("http://{addr}/v1/mcp/workspaces/w/dataagents/a/agent");
    let agent = DataAgent::new(options(url).timeout(Duration::from_secs(60))).unwrap();
    assert_eq!(agent.protocol(), DataAgentProtocol::Mcp);
    let started = Instant::now();
    let e = ask(&agent, "Endless?").await.unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Error, "{e}");
    assert!(e.to_string().contains("too large"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
