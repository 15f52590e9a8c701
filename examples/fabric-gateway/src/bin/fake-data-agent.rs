//! Runs the fake Fabric data agent alone, for trying the gateway against it or poking it
//! with curl.
//!
//! `cargo run -p fabric-gateway --bin fake-data-agent [-- ADDR] [--sse] [--no-sessions]`
//! (ADDR defaults to `127.0.0.1:8001`, or `FAKE_AGENT_ADDR`).
#![forbid(unsafe_code)]

use fabric_gateway::fake_agent::{FakeAgent, McpResponseMode};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut addr = std::env::var("FAKE_AGENT_ADDR").unwrap_or_else(|_| "127.0.0.1:8001".to_owned());
    let mut sse = false;
    let mut sessions = true;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--sse" => sse = true,
            "--no-sessions" => sessions = false,
            "-h" | "--help" => {
                println!("usage: fake-data-agent [ADDR] [--sse] [--no-sessions]");
                return Ok(());
            }
            other => addr = other.to_owned(),
        }
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let agent = FakeAgent::start_on(listener).await?;
    if sse {
        agent.controls.set_mcp_response_mode(McpResponseMode::Sse);
    }
    agent.controls.set_mcp_sessions(sessions);
    println!("fake data agent listening on {}", agent.base_url);
    println!("  MCP:        {}", agent.mcp_url());
    println!("  assistants: {}", agent.assistants_url());
    println!("  any non-empty bearer token is accepted; Ctrl-C stops it");
    println!(
        "  e.g. DATA_AGENT_URL={} cargo run -p fabric-gateway",
        agent.mcp_url()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
