//! The README's code, compiled the way a user compiles it.
//!
//! Doctests would run with every feature of the crate on and with the workspace's own
//! dev-dependencies, which hides exactly the mistakes a newcomer makes (a missing `axum`
//! feature, `tracing-subscriber` without `json`). So each section of `README.md` that opens
//! with a ```` ```toml ```` block holding `[dependencies]` becomes a scratch crate outside the
//! workspace with those dependencies and nothing else (`tower-rampart` pointed at this
//! checkout, with the features the line names), and every ```` ```rust ```` block up to the
//! next such section is one of its files: a block with `fn main` is a binary, any other
//! block a module of the crate's library. Every Rust block of the README must compile: none
//! may be marked `ignore`.
//!
//! The scratch crates build in this workspace's target directory (dependencies built once
//! are reused) with a copy of its `Cargo.lock` (the versions the rest of the suite tests).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One README section: its dependency lines and its Rust blocks (with their line numbers).
#[derive(Debug)]
struct Section {
    line: usize,
    dependencies: String,
    blocks: Vec<(usize, String)>,
}

/// Fenced blocks of a Markdown text: (line of the opening fence, info string, body).
fn fenced_blocks(text: &str) -> Vec<(usize, String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((index + 1, info.trim().to_owned(), String::new()));
                }
            }
            Some((_, _, body)) => {
                if trimmed.starts_with("```") {
                    blocks.push(open.take().unwrap());
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "README.md has an unclosed code fence");
    blocks
}

fn sections(readme: &str) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    for (line, info, body) in fenced_blocks(readme) {
        let lang = info.split(',').next().unwrap_or_default();
        if lang == "toml" && body.contains("[dependencies]") {
            sections.push(Section {
                line,
                dependencies: body,
                blocks: Vec::new(),
            });
        } else if lang == "rust" {
            assert!(
                !info.contains("ignore") && !info.contains("no_run") && info == "rust",
                "README.md line {line}: a Rust block is marked `{info}`; every block must \
                 compile as it stands (plain ```rust)"
            );
            let section = sections.last_mut().unwrap_or_else(|| {
                panic!(
                    "README.md line {line}: a Rust block before any ```toml block with \
                     [dependencies]: say what it needs first"
                )
            });
            section.blocks.push((line, body));
        }
    }
    sections
}

/// The dependency lines with `tower-rampart` pointed at this checkout (features kept).
fn local_dependencies(dependencies: &str, crate_dir: &Path) -> String {
    let path = crate_dir.display().to_string().replace('\\', "/");
    let mut out = String::new();
    let mut found = false;
    for line in dependencies.lines() {
        let Some(spec) = line.trim().strip_prefix("tower-rampart") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        found = true;
        let spec = spec.trim_start().trim_start_matches('=').trim();
        let features = spec
            .find("features")
            .map(|at| {
                let rest = &spec[at..];
                let list = &rest[rest.find('[').unwrap()..=rest.find(']').unwrap()];
                format!(", features = {list}")
            })
            .unwrap_or_default();
        let no_default = if spec.contains("default-features = false") {
            ", default-features = false"
        } else {
            ""
        };
        writeln!(
            out,
            r#"tower-rampart = {{ path = "{path}"{no_default}{features} }}"#
        )
        .unwrap();
    }
    assert!(
        found,
        "a [dependencies] block without tower-rampart:\n{dependencies}"
    );
    out
}

fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // <target>/debug/deps/readme-<hash>
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

#[test]
fn every_rust_block_of_the_readme_compiles_with_only_the_dependencies_it_names() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(crate_dir.join("README.md")).unwrap();
    let sections = sections(&readme);
    assert!(
        sections.iter().map(|s| s.blocks.len()).sum::<usize>() >= 4,
        "the README's examples went missing: {sections:#?}"
    );
    let target = target_dir();
    let scratch_root = target.join("readme-check");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    for (number, section) in sections.iter().enumerate() {
        if section.blocks.is_empty() {
            continue;
        }
        let dir = scratch_root.join(format!("section-{number}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src/bin")).unwrap();
        let manifest = format!(
            "[package]\nname = \"readme-section-{number}\"\nversion = \"0.0.0\"\nedition = \
             \"2024\"\npublish = false\n\n# Outside the crate's workspace.\n[workspace]\n\n{}",
            local_dependencies(&section.dependencies, crate_dir)
        );
        std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
        std::fs::copy(crate_dir.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
        let mut lib = String::from("//! README section blocks that are not programs.\n");
        for (line, code) in &section.blocks {
            let file = format!("line_{line}");
            let annotated = format!("// README.md line {line}\n{code}");
            if code.contains("fn main(") {
                std::fs::write(dir.join(format!("src/bin/{file}.rs")), annotated).unwrap();
            } else {
                std::fs::write(dir.join(format!("src/{file}.rs")), annotated).unwrap();
                writeln!(lib, "#[allow(dead_code)]\nmod {file};").unwrap();
            }
        }
        std::fs::write(dir.join("src/lib.rs"), lib).unwrap();
        let output = Command::new(&cargo)
            .args(["build", "--quiet", "--all-targets", "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            // The outer test run's settings are not the user's.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .expect("run cargo");
        assert!(
            output.status.success(),
            "README.md section at line {} does not compile as a user would build it \
             (scratch crate {}):\n{}",
            section.line,
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn sections_and_dependency_lines_are_read_as_a_user_reads_them() {
    let readme = "intro\n```toml\n[dependencies]\ntower-rampart = { version = \"0.1\", \
                  features = [\"axum\"] }\naxum = \"0.8\"\n```\n```rust\nfn main() {}\n```\n\
                  ```sh\ncargo run\n```\n```rust\nfn helper() {}\n```\n";
    let sections = sections(readme);
    assert_eq!(sections.len(), 1);
    assert_eq!(sections[0].blocks.len(), 2);
    assert_eq!(sections[0].blocks[1].0, 13);
    let deps = local_dependencies(&sections[0].dependencies, Path::new("/repo"));
    assert!(deps.contains(r#"tower-rampart = { path = "/repo", features = ["axum"] }"#));
    assert!(deps.contains("axum = \"0.8\""));
    let plain = local_dependencies("[dependencies]\ntower-rampart = \"0.1\"\n", Path::new("/r"));
    assert!(plain.contains(r#"tower-rampart = { path = "/r" }"#));
}

#[test]
#[should_panic(expected = "every block must compile")]
fn an_ignored_block_is_refused() {
    sections("```toml\n[dependencies]\ntower-rampart = \"0.1\"\n```\n```rust,ignore\nx\n```\n");
}
