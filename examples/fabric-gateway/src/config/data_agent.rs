//! The data agent section: `DATA_AGENT_URL`, `DATA_AGENT_PROTOCOL`, `DATA_AGENT_API_VERSION`,
//! `DATA_AGENT_TIMEOUT_SECS`.

use std::time::Duration;

use super::{Reader, check_http_url};

const DEFAULT_API_VERSION: &str = "2024-05-01-preview";

/// Which protocol the data agent speaks (`DATA_AGENT_PROTOCOL`, else from the URL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataAgentProtocol {
    /// MCP over Streamable HTTP (`.../v1/mcp/workspaces/{ws}/dataagents/{id}/agent`).
    Mcp,
    /// The older OpenAI-Assistants-style API (`.../aiassistant/openai`).
    Assistants,
}

impl DataAgentProtocol {
    /// The protocol a data agent URL's shape implies, if it is recognisable.
    ///
    /// ```
    /// use fabric_gateway::config::DataAgentProtocol;
    ///
    /// let mcp = "https://api.fabric.microsoft.com/v1/mcp/workspaces/w/dataagents/a/agent";
    /// assert_eq!(DataAgentProtocol::detect(mcp), Some(DataAgentProtocol::Mcp));
    /// let old = "https://api.fabric.microsoft.com/v1/workspaces/w/dataagents/a/aiassistant/openai";
    /// assert_eq!(DataAgentProtocol::detect(old), Some(DataAgentProtocol::Assistants));
    /// assert_eq!(DataAgentProtocol::detect("https://example.com/"), None);
    /// ```
    pub fn detect(url: &str) -> Option<Self> {
        let parsed = reqwest::Url::parse(url).ok()?;
        let path = parsed.path().trim_end_matches('/').to_ascii_lowercase();
        if path.contains("/aiassistant/openai") || path.contains("/aiskills/") {
            Some(Self::Assistants)
        } else if path.contains("/mcp/") || path.ends_with("/mcp") {
            Some(Self::Mcp)
        } else {
            None
        }
    }

    /// `"mcp"` or `"assistants"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mcp => "mcp",
            Self::Assistants => "assistants",
        }
    }
}

/// How the data agent is reached.
#[derive(Clone, Debug)]
pub struct DataAgentSettings {
    /// `DATA_AGENT_URL`; `None` in development means "start the built-in fake".
    pub url: Option<String>,
    /// The protocol: `DATA_AGENT_PROTOCOL`, else from the URL; `None` only when `url` is
    /// `None` (then the fake is spoken to over MCP).
    pub protocol: Option<DataAgentProtocol>,
    /// `DATA_AGENT_API_VERSION` (assistants protocol).
    pub api_version: String,
    /// `DATA_AGENT_TIMEOUT_SECS`: one question's deadline.
    pub timeout: Duration,
}

/// Reads `DATA_AGENT_URL` (required in production), the protocol (explicit, else from the
/// URL's shape), the api-version and the deadline.
pub(super) fn read(r: &mut Reader<'_>) -> DataAgentSettings {
    let data_agent_url = r.get("DATA_AGENT_URL");
    if let Some(url) = &data_agent_url {
        if let Err(why) = check_http_url(url) {
            r.problem("DATA_AGENT_URL", why);
        }
    } else if r.production {
        r.problem(
            "DATA_AGENT_URL",
            "is required when ENVIRONMENT=production".to_owned(),
        );
    }
    let explicit_protocol = r.one_of(
        "DATA_AGENT_PROTOCOL",
        &[
            ("mcp", DataAgentProtocol::Mcp),
            ("assistants", DataAgentProtocol::Assistants),
        ],
    );
    let protocol = match (&data_agent_url, explicit_protocol) {
        (_, Some(p)) => Some(p),
        (Some(url), None) => {
            let detected = DataAgentProtocol::detect(url);
            if detected.is_none() && check_http_url(url).is_ok() {
                r.problem(
                    "DATA_AGENT_URL",
                    "its shape tells neither .../mcp/.../agent nor .../aiassistant/openai: \
                     set DATA_AGENT_PROTOCOL to mcp or assistants"
                        .to_owned(),
                );
            }
            detected
        }
        (None, None) => None,
    };
    let api_version = match r.get("DATA_AGENT_API_VERSION") {
        None => DEFAULT_API_VERSION.to_owned(),
        Some(v) => {
            if !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                r.problem(
                    "DATA_AGENT_API_VERSION",
                    format!("{v:?} is not an api-version like 2024-05-01-preview"),
                );
            }
            v
        }
    };
    let timeout = r
        .positive_int("DATA_AGENT_TIMEOUT_SECS", 120, 3600)
        .map(Duration::from_secs);

    DataAgentSettings {
        url: data_agent_url,
        protocol,
        api_version,
        timeout: timeout.unwrap_or_default(),
    }
}
