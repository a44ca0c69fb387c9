//! Bearer-token authentication, on and off.

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
        "{}:2: a token must not contain spaces",
        bad.display()
    )));
}

#[test]
fn without_tokens_calls_are_open() {
    let node = Node::start("version: v1\n");
    assert!(tree(&node, None, None).status.success());
}
