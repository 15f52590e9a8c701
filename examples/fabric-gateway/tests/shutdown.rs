//! The binary: the start-up banner, and SIGTERM draining an in-flight request before a
//! clean exit.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fabric_gateway::fake_agent::{FakeAgent, fake_answer};
use serde_json::{Value, json};

struct Running {
    child: Child,
    base: String,
    output: Arc<Mutex<Vec<String>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Starts the binary in local mode on a free port with `vars`; waits for its banner.
fn start(vars: &[(&str, &str)]) -> Running {
    let dir = std::env::temp_dir().join(format!("gateway-shutdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fabric-gateway"))
        .env_clear()
        .env("BIND_ADDR", "127.0.0.1:0")
        .envs(vars.iter().copied())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let output = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = Arc::clone(&output);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(format!("http://{}", rest.trim()));
            }
            lines.lock().unwrap().push(line);
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the gateway prints its address");
    Running {
        child,
        base,
        output,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let fake = FakeAgent::start().await.unwrap();
    let agent_url = fake.mcp_url();
    let mut gw = start(&[("DATA_AGENT_URL", agent_url.as_str())]);
    let base = gw.base.clone();

    // The banner tells how to try it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = gw.output.lock().unwrap().join("\n");
        let missing: Vec<_> = ["curl", "/dev/token", "/auth/client-login", "/query -H"]
            .into_iter()
            .filter(|needle| !out.contains(needle))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "banner lacks {missing:?}: {out}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let client = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let token: Value = client
        .post(format!("{base}/dev/token"))
        .json(&json!({"email": "ada@example.com", "name": "Ada"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let resp = client
        .post(format!("{base}/auth/client-login"))
        .json(&json!({ "access_token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A slow question is in flight when SIGTERM arrives.
    fake.controls.set_answer_delay(Duration::from_millis(1500));
    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/query");
        async move {
            client
                .post(url)
                .json(&json!({"query": "Slow one?"}))
                .send()
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.controls.rpc_count("tools/call") == 0 {
        assert!(Instant::now() < deadline, "the question reached the agent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(gw.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());

    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["response"], fake_answer("Slow one?").as_str());

    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "the gateway exits after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(0));
    let out = gw.output.lock().unwrap().join("\n");
    assert!(out.contains("draining"), "the shutdown is logged: {out}");
    assert!(!out.contains(&token), "no token in the logs");
    assert!(
        reqwest::get(format!("{base}/health")).await.is_err(),
        "nothing listens any more"
    );
}
