//! The web console in a real headless Chromium: the live tree, an exec's timeline with an
//! approval clicked through, and the sandboxes page. Screenshots go to `target/console/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cadre_tests::browser::Browser;
use cadre_tests::servers::{ModelServer, RecordServer, record_call, wait_for_record_tool};
use cadre_tests::{Node, everything_command, free_port, pid_of};
use serde_json::{Value, json};

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console")
}

fn conversation_state(node: &Node, conversation: &str) -> Value {
    let out = node.cli(&["conversations", "show", conversation, "-o", "json"]);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn wait_state(node: &Node, conversation: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while conversation_state(node, conversation)["exec_state"] != state {
        assert!(
            Instant::now() < deadline,
            "{conversation} never {state}:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_console_shows_the_live_tree_an_exec_timeline_with_its_approval_and_the_sandboxes() {
    let model = ModelServer::start(json!([record_call("from the console"), {"content": "noted"}]));
    let record = RecordServer::start(300);
    let console = format!("127.0.0.1:{}", free_port());
    let node = Node::start(&format!(
        r#"
version: v1
console: {{ listen: "{console}" }}
sandbox: {{ warm_pool: {{ min: 1 }} }}
{models}supervisor:
  intensity: 5
  period_secs: 30
  children:
    - {{ id: sleeper, process: {{ command: [sleep, "1000"] }} }}
{rec}    - id: careful
      agent: {{ model: scripted, tools: ["rec.*"], require_approval: ["rec.*"] }}
    - id: everything
      mcp: {{ command: {everything}, timeout_ms: 30000 }}
"#,
        models = model.models_yaml(),
        rec = record.child_yaml(),
        everything = everything_command(),
    ));
    wait_for_record_tool(&node);
    let browser = Browser::start();
    let ui = format!("http://{console}/ui");

    // The tree shows the node's actors, and follows a SIGKILL without a reload.
    browser.goto(&format!("{ui}#/tree"));
    let sleeper = r#"li.actor[data-path="root/sleeper"]"#;
    let pid = pid_of(&node.tree(), "root/sleeper");
    browser.wait_for(
        "the sleeper with its pid",
        Duration::from_secs(10),
        "return document.querySelector(arguments[0])?.dataset.pid",
        json!([sleeper]),
    );
    for path in [
        "root",
        "root/rec",
        "root/careful",
        "system/controller",
        "system/agents",
    ] {
        browser.wait_for(
            path,
            Duration::from_secs(5),
            "return document.querySelector(`li.actor[data-path=\"${arguments[0]}\"]`)",
            json!([path]),
        );
    }
    let loaded_at = browser.eval("return window.cadreLoadedAt", json!([]));
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let shown = browser.wait_for(
        "the new pid and restart count",
        Duration::from_secs(1),
        "const li = document.querySelector(arguments[0]);
         return li && li.dataset.status === 'running' && li.dataset.pid !== String(arguments[1])
             && li.dataset.restarts === '1' ? li.dataset.pid : null",
        json!([sleeper, pid]),
    );
    eprintln!(
        "the console showed the restart {:?} after the kill",
        killed.elapsed()
    );
    let new_pid = pid_of(&node.tree(), "root/sleeper");
    assert_eq!(shown, json!(new_pid.to_string()));
    assert_eq!(
        browser.eval("return window.cadreLoadedAt", json!([])),
        loaded_at,
        "the page was not reloaded"
    );
    browser.screenshot(&screenshots().join("tree.png"));

    // An exec waits on an approval: its timeline shows the model call and the wait; Approve
    // completes it, and the tool call joins the timeline.
    let mut exec = node.exec_in_background("careful", "approve-me", "note this");
    wait_state(&node, "approve-me", "waiting_approval");
    browser.goto(&format!("{ui}#/conversations/approve-me"));
    browser.wait_for(
        "the model call and the waiting approval",
        Duration::from_secs(10),
        "return document.querySelector('.step[data-kind=model][data-name=test-model]')
             && document.querySelector('.step.open[data-kind=approval]')
             && document.querySelector('#approve')",
        json!([]),
    );
    browser.click("#approve");
    wait_state(&node, "approve-me", "completed");
    let _ = exec.wait();
    let tool = browser.wait_for(
        "the tool call in the timeline",
        Duration::from_secs(10),
        "const tool = document.querySelector('.step[data-kind=tool][data-name=\"rec.record\"]');
         const approval = document.querySelector('.step[data-kind=approval]:not(.open)');
         return tool && approval && !tool.classList.contains('open')
             ? tool.querySelector('.dur').textContent : null",
        json!([]),
    );
    assert!(tool.as_str().unwrap().ends_with("ms"), "{tool}");
    assert_eq!(
        browser.eval(
            "return document.querySelectorAll('.step[data-kind=model]').length",
            json!([])
        ),
        2
    );
    browser.screenshot(&screenshots().join("conversation.png"));
    let audit = node.json_lines(&["conversations", "log", "cadre.audit", "-o", "json"]);
    assert!(
        audit
            .iter()
            .any(|e| e["method"] == "cadre.v1.Conversations/Approve" && e["target"] == "approve-me"),
        "the console's approval is audited like any API call: {audit:?}"
    );

    // The sandboxes page shows the pool: the MCP server's sandbox and a warm one.
    browser.goto(&format!("{ui}#/sandboxes"));
    browser.wait_for(
        "the MCP server's sandbox and a warm one",
        Duration::from_secs(30),
        "const rows = [...document.querySelectorAll('#sandboxes tr[data-sandbox]')];
         return rows.some((r) => r.textContent.includes('leased'))
             && rows.some((r) => r.textContent.includes('warm'))",
        json!([]),
    );
    browser.screenshot(&screenshots().join("sandboxes.png"));
}

/// `(status, JSON body)` of a console API call with this bearer token (none if empty).
fn call(method: &str, url: &str, token: &str, body: Value) -> (u16, Value) {
    let (status, text) =
        cadre_tests::http(method, url, token, Some(body)).expect("the console answers");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn the_console_api_takes_the_api_tokens_and_their_roles() {
    let console = format!("127.0.0.1:{}", free_port());
    let node = Node::start(&format!(
        r#"
version: v1
console: {{ listen: "{console}" }}
api:
  tokens:
    - {{ name: ops, token: ops-secret, role: admin }}
    - {{ name: viewer, token: viewer-secret, role: reader }}
"#
    ));
    let api = format!("http://{console}/api/v1");
    let (status, body) = call("GET", &format!("{api}/tree"), "", json!(null));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "UNAUTHENTICATED");
    let (status, body) = call("GET", &format!("{api}/tree"), "viewer-secret", json!(null));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["trees"][0]["root"]["path"], "root");
    let (status, _) = call("GET", &format!("{api}/conversations"), "wrong", json!(null));
    assert_eq!(status, 401);

    // A reader may not decide an approval: refused before anything is looked at.
    let decide = format!("{api}/conversations/nobody/approve");
    let (status, body) = call("POST", &decide, "viewer-secret", json!({"approved": true}));
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "PERMISSION_DENIED");
    assert!(body["error"].as_str().unwrap().contains("viewer"), "{body}");
    // An admin may: the conversation does not exist, and that is what it hears.
    let (status, body) = call("POST", &decide, "ops-secret", json!({"approved": true}));
    assert_eq!(status, 404, "{body}");
    drop(node);
}

#[test]
fn a_console_is_refused_where_the_api_takes_client_certificates_and_no_tokens() {
    let dir = cadre_tests::TempDir::new("console-mtls");
    let out = cadre_tests::cli(&["certs", "init", &dir.path().to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = |name: &str| dir.path().join(name).display().to_string();
    let config = dir.path().join("cadre.yaml");
    std::fs::write(
        &config,
        format!(
            "version: v1\napi:\n  tls: {{ cert_file: {}, key_file: {}, client_ca_file: {} }}\n\
             console: {{ listen: \"127.0.0.1:{}\" }}\n",
            file("node.crt"),
            file("node.key"),
            file("ca.crt"),
            free_port()
        ),
    )
    .unwrap();
    let mut serve = std::process::Command::new(cadre_tests::cadre_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = serve.kill();
            let _ = serve.wait();
            panic!("the node started a console that bypasses client certificates");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = serve.wait_with_output().unwrap();
    assert_eq!(
        status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("console.listen") && stderr.contains("api.tokens"),
        "{stderr}"
    );
}
