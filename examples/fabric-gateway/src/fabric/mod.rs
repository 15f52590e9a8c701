//! The Fabric Data Agent client: both protocols behind one [`DataAgent`].
//!
//! - **MCP** (JSON-RPC 2.0 over Streamable HTTP), Microsoft's current way, at
//!   `.../v1/mcp/workspaces/{ws}/dataagents/{id}/agent`;
//! - **assistants**, the older OpenAI-Assistants-style API at `.../aiassistant/openai`.
//!
//! The protocol is `DATA_AGENT_PROTOCOL`, else read from the URL's shape
//! ([`DataAgentProtocol::detect`]). Every question has a deadline
//! (`DATA_AGENT_TIMEOUT_SECS`); each HTTP request is retried at most twice with backoff on
//! 5xx, timeouts and connection failures; a `429` with `Retry-After` is waited out when the
//! deadline allows, else reported as `FABRIC_RATE_LIMIT`. Requests carry the user's token
//! (`Authorization: Bearer`, marked sensitive so it is never logged) and the request's
//! correlation id as `ActivityId`. Failures are [`FabricError`]s in the categories the
//! browser app knows.
//!
//! # Why not `rmcp`
//!
//! The official Rust MCP SDK (`rmcp` 3.x, `transport-streamable-http-client-reqwest`) was
//! evaluated and not used:
//! - its transport sets the bearer token and custom headers once per transport
//!   (`auth_header`, `custom_headers`), while each question here carries a different
//!   user's token and its own `ActivityId`; we would build a client, worker task and
//!   handshake per question anyway, which is all this protocol needs;
//! - it brings reqwest 0.13 (a second HTTP stack next to our 0.12), whose `rustls` feature
//!   uses the aws-lc provider (a slow C build) unless one opts out of a provider entirely;
//! - the per-question deadline, the retry/`Retry-After` policy, the mapping of HTTP
//!   statuses and Fabric error bodies (`errorCode`, `requestId`) to the `FABRIC_*`
//!   categories, and "re-initialize exactly once on a 404 for a known session" sit inside
//!   its worker, where they cannot be set per call.
//!
//! The client needs four JSON-RPC messages, a JSON-or-SSE response reader and two headers
//! (`Mcp-Session-Id`, `MCP-Protocol-Version`): about 300 lines on the reqwest client the
//! gateway already uses, tested against the fake data agent in JSON and SSE modes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use fabric_gateway::fabric::{DataAgent, DataAgentOptions};
//!
//! let agent = DataAgent::new(
//!     DataAgentOptions::new("https://api.fabric.microsoft.com/v1/mcp/workspaces/w/dataagents/a/agent")
//!         .timeout(Duration::from_secs(120)),
//! )?;
//! let answer = agent.ask("How many orders last week?", &[], "<user token>", "corr-1", false).await?;
//! println!("{}", answer.text);
//! # Ok(()) }
//! ```

mod assistants;
mod error;
mod history;
mod mcp;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use crate::metrics::DataAgentMetrics;
use crate::outbound::{HttpClient, spawn_in_request_scope};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

pub use crate::config::DataAgentProtocol;
use crate::config::DataAgentSettings;
pub use error::{ErrorCategory, FabricError};
pub use history::{
    ChatMessage, ChatRole, MAX_HISTORY_CHARS, MAX_HISTORY_MESSAGES, bounded_history,
};

use assistants::{AssistantsClient, Threads};
use mcp::McpClient;
use transport::{Call, Transport};

/// A data agent's answer to one question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// The answer text.
    pub text: String,
    /// The run's final status (`"completed"`).
    pub run_status: Option<String>,
    /// Run steps (assistants protocol with details; 0 for MCP).
    pub steps_count: usize,
    /// Messages of this exchange: replayed history, the question and the answer(s).
    pub messages_count: usize,
    /// The SQL/DAX query the agent ran (assistants protocol with details), if found.
    pub sql_query: Option<String>,
    /// Up to 10 markdown table lines of the data the agent read, if any.
    pub data_preview: Option<Vec<String>>,
}

/// How to reach a data agent, with the question deadline and retry timings.
#[derive(Clone, Debug)]
pub struct DataAgentOptions {
    url: String,
    protocol: Option<DataAgentProtocol>,
    api_version: String,
    timeout: Duration,
    poll_interval: Duration,
    attempt_timeout: Duration,
    retry_backoff: Duration,
    max_retries: u32,
}

impl DataAgentOptions {
    /// Options for `url` with the defaults: protocol from the URL, api-version
    /// `2024-05-01-preview`, deadline 120 s, polling every 2 s, 30 s per attempt of a
    /// quick request, backoff 500 ms then 1 s, at most 2 retries.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            protocol: None,
            api_version: "2024-05-01-preview".to_owned(),
            timeout: Duration::from_secs(120),
            poll_interval: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(500),
            max_retries: 2,
        }
    }

    /// Options from the configuration, for `url` (the configured `DATA_AGENT_URL`, or the
    /// built-in fake's URL in local mode).
    pub fn from_settings(settings: &DataAgentSettings, url: impl Into<String>) -> Self {
        let mut options = Self::new(url)
            .api_version(settings.api_version.clone())
            .timeout(settings.timeout);
        options.protocol = settings.protocol;
        options
    }

    /// Forces the protocol instead of reading it from the URL.
    pub fn protocol(mut self, protocol: DataAgentProtocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// The `api-version` query value (assistants protocol).
    pub fn api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = version.into();
        self
    }

    /// One question's deadline, everything included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often a run is polled (assistants protocol).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Time allowed for one attempt of a quick request (not for the MCP tool call, which
    /// gets the whole remaining deadline).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The first retry's backoff; it doubles for the next.
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff;
        self
    }
}

/// A data agent client (MCP or assistants). Cheap to clone; share one per process.
#[derive(Clone, Debug)]
pub struct DataAgent {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    protocol: Protocol,
    timeout: Duration,
    metrics: DataAgentMetrics,
}

#[derive(Debug)]
enum Protocol {
    Mcp(McpClient),
    Assistants(AssistantsClient),
}

impl DataAgent {
    /// Builds the client; its instruments come from the global meter provider installed
    /// now (see [`metrics`](crate::metrics)). Fails (category `ERROR`) when the URL is not http(s) or its
    /// protocol cannot be told from its shape and was not given.
    pub fn new(options: DataAgentOptions) -> Result<Self, FabricError> {
        let url = Url::parse(&options.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                FabricError::new(
                    ErrorCategory::Error,
                    "the data agent URL is not an http(s) URL",
                )
            })?;
        let protocol = options
            .protocol
            .or_else(|| DataAgentProtocol::detect(&options.url))
            .ok_or_else(|| {
                FabricError::new(
                    ErrorCategory::Error,
                    "cannot tell the data agent protocol from its URL; set DATA_AGENT_PROTOCOL",
                )
            })?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("fabric-gateway/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|_| FabricError::new(ErrorCategory::Error, "cannot build the HTTP client"))?;
        let transport = Transport {
            client: HttpClient::new(client),
            attempt_timeout: options.attempt_timeout,
            retry_backoff: options.retry_backoff,
            max_retries: options.max_retries,
        };
        let protocol = match protocol {
            DataAgentProtocol::Mcp => Protocol::Mcp(McpClient::new(url, transport)),
            DataAgentProtocol::Assistants => Protocol::Assistants(AssistantsClient::new(
                url,
                options.api_version,
                transport,
                options.poll_interval,
            )),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                protocol,
                timeout: options.timeout,
                metrics: DataAgentMetrics::new(),
            }),
        })
    }

    /// The protocol this client speaks.
    pub fn protocol(&self) -> DataAgentProtocol {
        match self.inner.protocol {
            Protocol::Mcp(_) => DataAgentProtocol::Mcp,
            Protocol::Assistants(_) => DataAgentProtocol::Assistants,
        }
    }

    /// Asks `question` with the user's `history` (bounded to the last 12 messages / 8000
    /// characters), as the user (`user_token`), tagged with `correlation_id` (sent as
    /// `ActivityId`). `detailed` also reads the run steps (SQL, data preview) where the
    /// protocol has them.
    pub async fn ask(
        &self,
        question: &str,
        history: &[ChatMessage],
        user_token: &str,
        correlation_id: &str,
        detailed: bool,
    ) -> Result<Answer, FabricError> {
        let started = Instant::now();
        let timeout = self.inner.timeout;
        let deadline = started + timeout;
        let call = Call::new(user_token, correlation_id, deadline, timeout)?;
        let result = match &self.inner.protocol {
            Protocol::Mcp(client) => {
                tokio::time::timeout_at(deadline, client.ask(&call, question, history))
                    .await
                    .unwrap_or_else(|_| Err(call.timeout_error("answering")))
            }
            Protocol::Assistants(client) => {
                let threads = Threads::default();
                let result = tokio::time::timeout_at(
                    deadline,
                    client.ask(&call, question, history, detailed, &threads),
                )
                .await
                .unwrap_or_else(|_| Err(call.timeout_error("answering")));
                delete_threads_later(client, &call, threads.take());
                result
            }
        };
        let elapsed = started.elapsed();
        self.inner.metrics.record(
            self.protocol(),
            elapsed.as_secs_f64(),
            result.as_ref().err().map(FabricError::category),
        );
        let elapsed_ms = elapsed.as_millis() as u64;
        match &result {
            Ok(_) => tracing::info!(
                protocol = self.protocol().as_str(),
                elapsed_ms,
                "data agent answered"
            ),
            Err(e) => tracing::warn!(
                protocol = self.protocol().as_str(),
                elapsed_ms,
                category = e.category().as_str(),
                status = e.status(),
                error_code = e.error_code(),
                request_id = e.request_id(),
                "data agent question failed"
            ),
        }
        result
    }
}

/// The `{"type": "text"}` parts of `value`'s `content` array, joined by newlines; each part's
/// text is at `text_pointer` (`/text` in MCP tool results, `/text/value` in assistants
/// messages).
fn content_text(value: &Value, text_pointer: &str) -> String {
    let Some(parts) = value.get("content").and_then(Value::as_array) else {
        return String::new();
    };
    parts
        .iter()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|p| p.pointer(text_pointer).and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Deletes the question's threads in the background (best effort, its own short deadline).
fn delete_threads_later(client: &AssistantsClient, call: &Call, threads: Vec<String>) {
    if threads.is_empty() {
        return;
    }
    let client = client.clone();
    let timeout = Duration::from_secs(10);
    let mut call = call.clone();
    call.deadline = Instant::now() + timeout;
    call.timeout = timeout;
    spawn_in_request_scope(async move {
        for thread in threads {
            client.delete_thread(&call, &thread).await;
        }
    });
}
