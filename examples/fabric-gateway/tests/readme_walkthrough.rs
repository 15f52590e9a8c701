//! The README's "Try it" walkthrough, run as written against the binary in local mode.
//!
//! The shell lines come from `examples/fabric-gateway/README.md` at test time (nothing is
//! copied here): every ```` ```sh ```` block of the "Try it" section runs in order in one
//! `bash`, with `BASE` pointed at a gateway this test starts on a free port. A command's
//! expected output is the `# ` comment lines written right under it (a comment after a
//! blank line describes the next command instead). An expected line that is JSON is compared
//! as JSON (`{...}` stands for any value); other lines are compared as text, except the
//! seconds a quota has left (`t=57`, `retry-after: 57`), which depend on how long the
//! walkthrough took; a line `...` stands for any number of lines.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The gateway binary on a free port, killed on drop.
struct Gateway {
    child: Child,
    base: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(dir: &Path) -> Gateway {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fabric-gateway"))
        .env_clear()
        .env("BIND_ADDR", "127.0.0.1:0")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(format!("http://{}", rest.trim()));
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the gateway prints its address");
    Gateway { child, base }
}

/// One command of the walkthrough and the output the README shows under it.
#[derive(Debug)]
struct Step {
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// The ```sh blocks between `## Try it` and the next `## ` heading.
fn walkthrough_blocks(readme: &str) -> Vec<(usize, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut in_section = false;
    let mut open: Option<(usize, Vec<String>)> = None;
    for (index, line) in readme.lines().enumerate() {
        if open.is_none() && line.starts_with("## ") {
            in_section = line.trim() == "## Try it";
            continue;
        }
        if !in_section {
            continue;
        }
        match &mut open {
            None if line.trim() == "```sh" => open = Some((index + 2, Vec::new())),
            None => {}
            Some(_) if line.trim() == "```" => blocks.push(open.take().unwrap()),
            Some((_, lines)) => lines.push(line.to_owned()),
        }
    }
    blocks
}

/// Splits a block into commands (continuation lines and `for ... done` kept together) with
/// the comment lines right under each.
fn steps(first_line: usize, lines: &[String]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut command = String::new();
    let mut start = 0;
    let mut loop_depth = 0usize;
    let mut after_command = false;
    for (offset, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if command.is_empty() && loop_depth == 0 {
            if trimmed.is_empty() {
                after_command = false;
                continue;
            }
            if let Some(comment) = trimmed.strip_prefix('#') {
                if after_command {
                    let step = steps.last_mut().unwrap();
                    step.expected
                        .push(comment.strip_prefix(' ').unwrap_or(comment).to_owned());
                }
                continue;
            }
            start = first_line + offset;
        }
        command.push_str(line);
        command.push('\n');
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        if words.first() == Some(&"for") || words.first() == Some(&"while") {
            loop_depth += 1;
        }
        if words.first() == Some(&"done") {
            loop_depth -= 1;
        }
        if !trimmed.ends_with('\\') && loop_depth == 0 {
            steps.push(Step {
                line: start,
                command: std::mem::take(&mut command),
                expected: Vec::new(),
            });
            after_command = true;
        }
    }
    assert!(
        command.is_empty(),
        "an unfinished command at the end of a block"
    );
    steps
}

/// `{...}` in the README's JSON stands for any value.
const ANY: &str = "\u{0}any";

fn json_matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(s), _) if s == ANY => true,
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|got| json_matches(v, got)))
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| json_matches(e, a))
        }
        _ => expected == actual,
    }
}

/// The seconds a quota has left depend on the run's timing.
fn timeless(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while !rest.is_empty() {
        let marker = ["t=", "retry-after: "]
            .iter()
            .filter_map(|m| rest.find(m).map(|at| (at, m.len())))
            .min();
        let Some((at, len)) = marker else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..at + len]);
        rest = &rest[at + len..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            let seconds: u64 = rest[..digits].parse().unwrap();
            out.push_str(if (1..=60).contains(&seconds) {
                "N"
            } else {
                "out-of-range"
            });
            rest = &rest[digits..];
        }
    }
    out
}

fn line_matches(expected: &str, actual: &str) -> bool {
    // The wildcard as a JSON string (`\u0000` is how JSON writes the NUL that marks it).
    let as_json = expected.replace("{...}", "\"\\u0000any\"");
    match serde_json::from_str::<Value>(&as_json) {
        Ok(expected_json @ (Value::Object(_) | Value::Array(_))) => {
            serde_json::from_str::<Value>(actual)
                .is_ok_and(|got| json_matches(&expected_json, &got))
        }
        _ => timeless(expected) == timeless(actual),
    }
}

/// `...` lines match any number of lines.
fn output_matches(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first.trim() == "..." => {
            (0..=actual.len()).any(|skip| output_matches(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual
            .split_first()
            .is_some_and(|(got, more)| line_matches(first, got) && output_matches(rest, more)),
    }
}

#[test]
fn the_readme_walkthrough_gives_the_outputs_it_shows() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let steps: Vec<Step> = walkthrough_blocks(&readme)
        .iter()
        .flat_map(|(line, lines)| steps(*line, lines))
        .collect();
    let checked = steps.iter().filter(|s| !s.expected.is_empty()).count();
    assert!(
        steps.len() >= 15 && checked >= 10,
        "the walkthrough went missing from the README: {steps:#?}"
    );
    assert!(
        steps
            .iter()
            .any(|s| s.expected.iter().any(|e| e.contains("429"))),
        "the walkthrough no longer shows the refused 11th query"
    );

    let dir = std::env::temp_dir().join(format!("gateway-walkthrough-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let gateway = start_gateway(&dir);

    // One bash runs every step in order (TOKEN and cookies.txt carry over), each step's
    // output into its own file.
    let mut script = String::from("set -u\n");
    for (index, step) in steps.iter().enumerate() {
        let command = if step.command.trim_start().starts_with("BASE=") {
            format!("BASE={}\n", gateway.base)
        } else {
            step.command.clone()
        };
        script.push_str(&format!("{{\n{command}}} > step-{index}.out 2>&1\n"));
    }
    let status = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .status()
        .expect("bash runs (and curl is installed: scripts/test.sh installs it)");
    assert!(status.success(), "the walkthrough script failed: {script}");

    let mut failures = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        if step.expected.is_empty() {
            continue;
        }
        let output = std::fs::read_to_string(dir.join(format!("step-{index}.out"))).unwrap();
        let lines: Vec<&str> = output.lines().map(|l| l.trim_end_matches('\r')).collect();
        if !output_matches(&step.expected, &lines) {
            failures.push(format!(
                "README.md line {}:\n{}  expected:\n    {}\n  got:\n    {}",
                step.line,
                step.command,
                step.expected.join("\n    "),
                lines.join("\n    ")
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_walkthrough_reader_splits_commands_and_expectations_as_written() {
    let block: Vec<String> = [
        "# a description",
        "curl -s a \\",
        "  -d b",
        "# {\"ok\":true}",
        "",
        "# next description",
        "for i in 1 2; do",
        "  echo $i",
        "done",
        "# 1",
        "# ...",
    ]
    .map(String::from)
    .to_vec();
    let steps = steps(10, &block);
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].line, 11);
    assert_eq!(steps[0].command, "curl -s a \\\n  -d b\n");
    assert_eq!(steps[0].expected, ["{\"ok\":true}"]);
    assert_eq!(steps[1].expected, ["1", "..."]);

    assert!(line_matches(
        r#"{"a":1,"user":{...}}"#,
        r#"{"user":{"x":[1]},"a":1}"#
    ));
    assert!(!line_matches(
        r#"{"a":1,"user":{...}}"#,
        r#"{"a":2,"user":null}"#
    ));
    assert!(line_matches("retry-after: 57", "retry-after: 3"));
    assert!(!line_matches("retry-after: 57", "retry-after: 0"));
    assert!(!line_matches(
        "HTTP/1.1 429 Too Many Requests",
        "HTTP/1.1 200 OK"
    ));
    let got = ["query 4: 200", "query 5: 200", "query 11: 429"];
    let expected = ["query 4: 200", "...", "query 11: 429"].map(String::from);
    assert!(output_matches(&expected, &got));
    assert!(!output_matches(&expected, &got[..2]));
}
