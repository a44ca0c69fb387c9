//! Bearer tokens: authentication on and off, the roles of tokens, and the audit of changes.

use cadre_tests::{Node, TempDir, cadre_bin};
use tonic::Code;

fn tree(node: &Node, token: Option<&str>, env: Option<&str>) -> std::process::Output {
    let mut cmd = std::process::Command::new(cadre_bin());
    cmd.args(["tree", "-o", "json", "--server", &node.addr])
        .env_remove("CADRE_TOKEN");
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    if let Some(t) = env {
        cmd.env("CADRE_TOKEN", t);
    }
    cmd.output().unwrap()
}

#[test]
fn with_tokens_every_call_needs_one() {
    let node = Node::start("version: v1\napi:\n  tokens: [s3cret, other]\n");
    let denied = tree(&node, None, None);
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    assert!(tree(&node, Some("s3cret"), None).status.success());
    assert!(
        tree(&node, None, Some("other")).status.success(),
        "$CADRE_TOKEN works too"
    );
    assert_eq!(tree(&node, Some("wrong"), None).status.code(), Some(1));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut conversations =
            cadre_proto::v1::conversations_client::ConversationsClient::new(channel.clone());
        let err = conversations
            .list(cadre_proto::v1::ListConversationsRequest {
                after: String::new(),
                limit: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        // Probes need no secret.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    });
}

#[test]
fn a_token_file_adds_tokens_and_bad_files_are_usage_errors() {
    let dir = TempDir::new("tokens");
    let file = dir.path().join("tokens");
    std::fs::write(&file, "# ops\nfrom-file\n\n").unwrap();
    let node = Node::start_with_args("version: v1\n", &["--token-file", file.to_str().unwrap()]);
    assert_eq!(tree(&node, None, None).status.code(), Some(1));
    assert!(tree(&node, Some("from-file"), None).status.success());

    let bad = dir.path().join("bad");
    std::fs::write(&bad, "ok\nhas space\n").unwrap();
    let out = cadre_tests::cli(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!(
        "{}:2: a token must be non-empty with no spaces",
        bad.display()
    )));
}

#[test]
fn without_tokens_calls_are_open() {
    let node = Node::start("version: v1\n");
    assert!(tree(&node, None, None).status.success());
}

const ROLES: &str = "version: v1
api:
  tokens:
    - {name: root, token: admin-secret, role: admin}
    - {name: ops, token: ops-secret, role: operator}
    - {name: review, token: review-secret, role: approver}
    - {name: dash, token: reader-secret, role: reader}
    - {name: acme, token: acme-secret, role: agent-user, conversation_prefix: acme-}
supervisor:
  children:
    - id: sleeper
      process: {command: [sleep, '1000']}
";

/// `cadre --token TOKEN ARGS…` against `node`.
fn as_token(node: &Node, token: &str, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend(["--token", token]);
    node.cli(&all)
}

/// `cadre --token TOKEN ARGS…` is refused: exit 2, `why` in its message.
fn refused(node: &Node, token: &str, args: &[&str], why: &str) {
    let out = as_token(node, token, args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `api_call` records of the node's audit log (JSON), once `want` of them are there.
fn api_calls(node: &Node, want: usize) -> Vec<serde_json::Value> {
    let mut calls = Vec::new();
    for _ in 0..100 {
        let out = as_token(
            node,
            "admin-secret",
            &["conversations", "log", "cadre.audit", "-o", "json"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        calls = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["type"] == "api_call")
            .collect();
        if calls.len() >= want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    calls
}

#[test]
fn each_role_does_only_what_it_may_and_changes_are_audited_with_the_token_s_name() {
    let node = Node::start(ROLES);

    // An agent-user runs and reads its own conversations only.
    let mine = as_token(
        &node,
        "acme-secret",
        &[
            "exec",
            "--agent",
            "echo",
            "--conversation",
            "acme-1",
            "--input",
            "hi",
        ],
    );
    assert!(mine.status.success(), "{}", stderr(&mine));
    let other = as_token(
        &node,
        "admin-secret",
        &[
            "exec",
            "--agent",
            "echo",
            "--conversation",
            "other-1",
            "--input",
            "hi",
        ],
    );
    assert!(other.status.success(), "{}", stderr(&other));
    for args in [
        &[
            "exec",
            "--agent",
            "echo",
            "--conversation",
            "other-1",
            "--input",
            "x",
        ][..],
        &["exec", "--agent", "echo", "--input", "x"],
        &["conversations", "show", "other-1"],
        &["conversations", "log", "cadre.audit"],
        &[
            "fork",
            "--conversation",
            "acme-1",
            "--at-seq",
            "1",
            "--to",
            "other-2",
        ],
    ] {
        refused(
            &node,
            "acme-secret",
            args,
            "token `acme` (role agent-user) may use only conversations whose id starts with `acme-`",
        );
    }
    let listed = as_token(&node, "acme-secret", &["conversations", "ls", "-o", "json"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("acme-1") && !listed.contains("other-1"),
        "{listed}"
    );
    // Nor the node, nor approvals.
    refused(
        &node,
        "acme-secret",
        &["tree"],
        "token `acme` (role agent-user) may not call cadre.v1.Actors/Tree",
    );
    refused(
        &node,
        "acme-secret",
        &[
            "tools",
            "call",
            "workspace.run",
            "--conversation",
            "acme-1",
            "--approve",
            "--args",
            "{}",
        ],
        "token `acme` (role agent-user) may not approve a tool call",
    );

    // A reader reads everything and changes nothing.
    assert!(as_token(&node, "reader-secret", &["tree"]).status.success());
    let out = as_token(
        &node,
        "reader-secret",
        &["conversations", "show", "other-1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    refused(
        &node,
        "reader-secret",
        &["conversations", "delete", "acme-1"],
        "token `dash` (role reader) may not call cadre.v1.Conversations/Delete",
    );
    refused(
        &node,
        "reader-secret",
        &["actors", "stop", "root/sleeper"],
        "token `dash` (role reader) may not call cadre.v1.Actors/Stop",
    );
    refused(
        &node,
        "review-secret",
        &["actors", "stop", "root/sleeper"],
        "(role approver) may not call cadre.v1.Actors/Stop",
    );
    let sleeper = as_token(
        &node,
        "reader-secret",
        &["actors", "get", "root/sleeper", "-o", "json"],
    );
    assert!(
        String::from_utf8_lossy(&sleeper.stdout).contains("\"running\""),
        "the refused stop changed nothing"
    );
    assert!(
        as_token(&node, "reader-secret", &["conversations", "show", "acme-1"])
            .status
            .success(),
        "the refused delete changed nothing"
    );

    // An operator runs the node but spawns nothing.
    let spec = TempDir::new("spec");
    let file = spec.path().join("child.yaml");
    std::fs::write(&file, "id: extra\nprocess: {command: [sleep, '1000']}\n").unwrap();
    refused(
        &node,
        "ops-secret",
        &["actors", "spawn", "-f", file.to_str().unwrap()],
        "token `ops` (role operator) may not call cadre.v1.Actors/Spawn",
    );
    let out = as_token(&node, "ops-secret", &["actors", "stop", "root/sleeper"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = as_token(&node, "ops-secret", &["conversations", "delete", "other-1"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The audit log names who changed what; refused calls changed nothing and are not in it.
    let calls = api_calls(&node, 4);
    let brief: Vec<(String, String, String, u64)> = calls
        .iter()
        .map(|c| {
            (
                c["caller"].as_str().unwrap().to_string(),
                c["method"].as_str().unwrap().to_string(),
                c["target"].as_str().unwrap().to_string(),
                c["code"].as_u64().unwrap(),
            )
        })
        .collect();
    let expect = |caller: &str, method: &str, target: &str| {
        assert!(
            brief.contains(&(caller.into(), method.into(), target.into(), 0)),
            "{caller} {method} {target} in {brief:#?}"
        );
    };
    expect("acme", "cadre.v1.Conversations/Exec", "acme-1");
    expect("root", "cadre.v1.Conversations/Exec", "other-1");
    expect("ops", "cadre.v1.Actors/Stop", "root/sleeper");
    expect("ops", "cadre.v1.Conversations/Delete", "other-1");
    assert_eq!(
        brief.len(),
        4,
        "only the calls that went through: {brief:#?}"
    );
    assert!(calls.iter().all(|c| c["role"].is_string()));
}
