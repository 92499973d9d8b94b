//! The OpenAPI document is the contract: a validator accepts it, and a client
//! generated from it by openapi-python-client works against the service.
//! Python and both tools come from `target/contract-venv`, which
//! `scripts/test` creates (pinned in `tests/contract/requirements.txt`).
use std::path::PathBuf;
use std::process::Command;

use sqlx::PgPool;

use crate::helpers::{KEY, TestApp};

fn venv_bin(tool: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/contract-venv/bin")
        .join(tool);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with scripts/test, which installs tests/contract/requirements.txt",
        bin.display()
    );
    bin
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

/// A fresh scratch directory (left in the system's temp dir on failure, to look at).
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smartdrop-contract-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn document_file(dir: &std::path::Path) -> PathBuf {
    let file = dir.join("openapi.json");
    std::fs::write(&file, smartdrop_webhooks::api::openapi::document()).unwrap();
    file
}

#[test]
fn the_document_is_valid_openapi() {
    let dir = scratch();
    let file = document_file(&dir);
    let out = run(Command::new(venv_bin("python"))
        .args(["-m", "openapi_spec_validator"])
        .arg(&file));
    assert!(out.contains("OK"), "{out}");
    std::fs::remove_dir_all(dir).ok();
}

#[sqlx::test]
async fn a_generated_python_client_creates_lists_gets_and_deletes_a_webhook(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let dir = scratch();
    let file = document_file(&dir);
    let generated = dir.join("smartdrop_client");
    run(Command::new(venv_bin("openapi-python-client"))
        .args(["generate", "--meta", "none", "--path"])
        .arg(&file)
        .arg("--output-path")
        .arg(&generated));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/contract/client_roundtrip.py"
    );
    let base = app.url("");
    let holder = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(Command::new(venv_bin("python"))
            .arg(script)
            .arg(&holder)
            .arg(base.trim_end_matches('/'))
            .arg(KEY))
    })
    .await
    .unwrap();
    assert!(out.contains("round trip ok"), "{out}");
    std::fs::remove_dir_all(dir).ok();
}
