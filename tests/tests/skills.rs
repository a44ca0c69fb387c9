//! Skills (kind `skill`, the two example skills in `examples/skills/`) and the built-in
//! workspace tools, on a real `cadre serve` with real gVisor sandboxes, through the CLI.

use std::path::PathBuf;
use std::time::Duration;

use cadre_tests::{Node, find};
use serde_json::Value;

fn skill_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/skills")
        .join(name)
        .canonicalize()
        .expect("the example skill exists")
}

/// `cadre tools call NAME --args ARGS --conversation C -o json [extra]`: exit code, the parsed
/// response, stderr.
fn call(
    node: &Node,
    conversation: &str,
    name: &str,
    args: &str,
    extra: &[&str],
) -> (i32, Value, String) {
    let mut argv = vec![
        "tools",
        "call",
        name,
        "--args",
        args,
        "--conversation",
        conversation,
        "-o",
        "json",
    ];
    argv.extend_from_slice(extra);
    let out = node.cli(&argv);
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        value,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn structured(r: &Value) -> &Value {
    &r["result"]["structuredContent"]
}

fn events(node: &Node, conversation: &str) -> usize {
    node.json_lines(&["conversations", "log", conversation, "-o", "json"])
        .len()
}

#[test]
fn skills_are_listed_activated_into_a_workspace_and_used_with_the_workspace_tools() {
    let config = format!(
        r#"
version: v1
sandbox:
  warm_pool: {{ min: 1, max: 4 }}
supervisor:
  children:
    - id: skills
      supervisor:
        children:
          - id: csv-summary
            skill: {{ path: "{csv}" }}
          - id: release-notes
            skill: {{ path: "{notes}" }}
"#,
        csv = skill_dir("csv-summary").display(),
        notes = skill_dir("release-notes").display(),
    );
    let node = Node::start(&config);
    let tree = node.wait_tree("the skills", Duration::from_secs(30), |t| {
        find(t, "root/skills/release-notes")["status"] == "running"
    });
    assert_eq!(find(&tree, "root/skills/csv-summary")["kind"], "skill");

    let tools = node.json_lines(&["tools", "ls", "-o", "json"]);
    let tool = |name: &str| {
        tools
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {tools:#?}"))
    };
    assert_eq!(tool("workspace.run")["requires_approval"], true);
    assert_eq!(tool("workspace.read_file")["requires_approval"], false);
    assert_eq!(tool("skills.activate_skill")["server"], "builtin");

    // The list: both skills with their front matter.
    let (code, r, err) = call(&node, "c1", "skills.list_skills", "{}", &[]);
    assert_eq!(code, 0, "{err}");
    let skills = structured(&r)["skills"].as_array().unwrap().clone();
    assert_eq!(skills.len(), 2, "{r}");
    assert_eq!(skills[0]["name"], "csv-summary");
    assert!(
        skills[0]["description"]
            .as_str()
            .unwrap()
            .starts_with("Summarises a CSV file")
    );
    assert_eq!(skills[1]["name"], "release-notes");

    // Activation: the instructions, and the folder in the caller's workspace.
    let (code, r, err) = call(
        &node,
        "c1",
        "skills.activate_skill",
        r#"{"name":"csv-summary"}"#,
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        structured(&r)["instructions"]
            .as_str()
            .unwrap()
            .contains("# Summarising a CSV file")
    );
    assert_eq!(
        structured(&r)["files"],
        serde_json::json!([
            "skills/csv-summary/SKILL.md",
            "skills/csv-summary/scripts/summarize.sh"
        ])
    );
    let (code, r, err) = call(
        &node,
        "c1",
        "workspace.list_files",
        r#"{"path":"skills/csv-summary/scripts"}"#,
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(structured(&r)["entries"][0]["name"], "summarize.sh");

    // Use it: write a file, run the skill's script (approval needed), read the result.
    let csv = r#"{"path":"data/fruit.csv","content":"name,qty,price\napple,3,1.5\npear,5,2\n"}"#;
    let (code, _, err) = call(&node, "c1", "workspace.write_file", csv, &[]);
    assert_eq!(code, 0, "{err}");
    let run = r#"{"command":"sh skills/csv-summary/scripts/summarize.sh data/fruit.csv > summary.txt && cat summary.txt"}"#;
    let before = events(&node, "c1");
    let (code, _, err) = call(&node, "c1", "workspace.run", run, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("FailedPrecondition") && err.contains("requires approval"),
        "{err}"
    );
    assert_eq!(
        events(&node, "c1"),
        before,
        "a refused call journals nothing"
    );
    let (code, r, err) = call(&node, "c1", "workspace.run", run, &["--approve"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(structured(&r)["exit_code"], 0, "{r}");
    let stdout = structured(&r)["stdout"].as_str().unwrap().to_string();
    assert!(
        stdout.contains("rows: 2") && stdout.contains("qty: sum 8, mean 4"),
        "{stdout}"
    );
    let (code, r, err) = call(
        &node,
        "c1",
        "workspace.read_file",
        r#"{"path":"summary.txt"}"#,
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(structured(&r)["content"], stdout.as_str());

    // The run tool's limits: a timeout kills the command; the output is capped.
    let (code, r, _) = call(
        &node,
        "c1",
        "workspace.run",
        r#"{"command":"sleep 30","timeout_ms":500}"#,
        &["--approve"],
    );
    assert_eq!(code, 1);
    assert_eq!(structured(&r)["timed_out"], true, "{r}");
    let (code, r, err) = call(
        &node,
        "c1",
        "workspace.run",
        r#"{"command":"head -c 200000 /dev/zero | tr '\\0' x; exit 3"}"#,
        &["--approve"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(structured(&r)["exit_code"], 3, "{r}");
    assert_eq!(structured(&r)["truncated"], true);
    assert_eq!(structured(&r)["stdout"].as_str().unwrap().len(), 64 * 1024);

    // Another conversation has a workspace (and a sandbox) of its own.
    let (code, r, _) = call(
        &node,
        "c2",
        "workspace.read_file",
        r#"{"path":"summary.txt"}"#,
        &[],
    );
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["is_error"], true);
    let (code, r, _) = call(
        &node,
        "c2",
        "workspace.run",
        r#"{"command":"ls skills 2>&1; ls /"}"#,
        &["--approve"],
    );
    assert_eq!(code, 0);
    assert!(
        !structured(&r)["stdout"]
            .as_str()
            .unwrap()
            .contains("csv-summary"),
        "{r}"
    );
    let (code, r, _) = call(
        &node,
        "c2",
        "workspace.read_file",
        r#"{"path":"../../etc/passwd"}"#,
        &[],
    );
    assert_eq!((code, &r["is_error"]), (1, &Value::Bool(true)), "{r}");

    // Unknown skill; schema checks apply to built-ins too.
    let (code, r, _) = call(
        &node,
        "c1",
        "skills.activate_skill",
        r#"{"name":"nope"}"#,
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("no skill `nope`")
    );
    let (code, _, err) = call(
        &node,
        "c1",
        "workspace.run",
        r#"{"command":"true","timeout_ms":0}"#,
        &["--approve"],
    );
    assert_eq!(code, 2, "{err}");

    // A stopped skill leaves the list; a bad skill folder fails to start, naming the line.
    let out = node.cli(&["actors", "stop", "root/skills/release-notes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, r, _) = call(&node, "c1", "skills.list_skills", "{}", &[]);
    assert_eq!(structured(&r)["skills"].as_array().unwrap().len(), 1, "{r}");
    let bad = node.dir.path().join("bad-skill");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("SKILL.md"),
        "---\nname: bad\n---\nno description\n",
    )
    .unwrap();
    let spec = node.dir.path().join("bad.yaml");
    std::fs::write(
        &spec,
        format!("id: bad\nskill: {{ path: \"{}\" }}\n", bad.display()),
    )
    .unwrap();
    let out = node.cli(&[
        "actors",
        "spawn",
        "-f",
        spec.to_str().unwrap(),
        "--parent",
        "root/skills",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SKILL.md:2: front matter needs a non-empty `description`"),
        "{err}"
    );
}

/// Writes a file in conversation `c1`'s workspace (and, with `memory_kept`, a marker in its
/// sandbox's `/tmp`) on a node whose idle timeout is half a second, waits until `cadre
/// sandboxes ls` shows the workspace's sandbox as `state`, then reads them back: the file is
/// there, and the marker is or is not.
fn an_idle_workspace_comes_back(sandbox: &str, state: &str, memory_kept: Option<bool>) {
    let node = Node::start(&format!("version: v1\nsandbox: {sandbox}\n"));
    let wrote = r#"{"path":"notes.txt","content":"kept"}"#;
    let (code, _, err) = call(&node, "c1", "workspace.write_file", wrote, &[]);
    assert_eq!(code, 0, "{err}");
    if memory_kept.is_some() {
        let marker = r#"{"command":"echo in-memory > /tmp/marker"}"#;
        let (code, _, err) = call(&node, "c1", "workspace.run", marker, &["--approve"]);
        assert_eq!(code, 0, "{err}");
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let listed = node.json_lines(&["sandboxes", "ls", "-o", "json"]);
        let own = listed
            .iter()
            .find(|s| s["actors"] == serde_json::json!(["ws.c1"]) && s["state"] == state);
        if let Some(own) = own {
            break own.clone();
        }
        assert!(std::time::Instant::now() < deadline, "{listed:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(listed["pid"], 0, "no process while {state}: {listed}");

    let (code, r, err) = call(
        &node,
        "c1",
        "workspace.read_file",
        r#"{"path":"notes.txt"}"#,
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(structured(&r)["content"], "kept", "its files stayed");
    if let Some(kept) = memory_kept {
        let read = r#"{"command":"cat /tmp/marker 2>/dev/null || echo gone"}"#;
        let (code, r, err) = call(&node, "c1", "workspace.run", read, &["--approve"]);
        assert_eq!(code, 0, "{err}");
        let expected = if kept { "in-memory\n" } else { "gone\n" };
        assert_eq!(structured(&r)["stdout"], expected, "{r}");
    }
    let back = node.json_lines(&["sandboxes", "ls", "-o", "json"]);
    let back = back.iter().find(|s| s["id"] == listed["id"]);
    assert_eq!(
        back.map(|s| &s["state"]),
        Some(&serde_json::json!("leased")),
        "{back:?}"
    );
}

#[test]
fn an_idle_conversation_workspace_is_suspended_and_restored_with_its_files_and_memory() {
    an_idle_workspace_comes_back(
        "{ warm_pool: { min: 1, max: 3, idle_timeout_ms: 500 } }",
        "suspended",
        Some(true),
    );
}

#[test]
fn without_checkpoints_an_idle_conversation_workspace_is_stopped_and_started_again_with_its_files()
{
    // The process provider cannot checkpoint (and its sandboxes have no /tmp of their own).
    an_idle_workspace_comes_back(
        "{ provider: process, allow_unsandboxed: true, \
           warm_pool: { min: 1, max: 3, idle_timeout_ms: 500 } }",
        "stopped",
        None,
    );
}

/// The names in a folder of a node's data dir (none if it does not exist).
fn names_in(data: &std::path::Path, folder: &str) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(data.join(folder))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The workspace directories under a node's data dir, by name.
fn workspace_dirs(data: &std::path::Path) -> std::collections::BTreeSet<String> {
    names_in(data, "workspaces")
}

/// The sandboxes kept for a conversation's workspace, by id.
fn kept_sandboxes(data: &std::path::Path) -> std::collections::BTreeSet<String> {
    names_in(data, "sandboxes/owners")
}

#[test]
fn a_workspace_survives_node_restarts_and_is_removed_only_with_its_conversation() {
    let config = "version: v1\nsandbox:\n  warm_pool: { min: 1, max: 4 }\n";
    let mut first = Node::start(config);
    let content = "line one\n\tünïcödé ✓\nlast line without newline";
    let files = [("w1", content), ("p:q", "colon"), ("p_q", "underscore")];
    for (conversation, text) in files {
        let args = serde_json::json!({"path": "notes/a.txt", "content": text}).to_string();
        let (code, _, err) = call(&first, conversation, "workspace.write_file", &args, &[]);
        assert_eq!(code, 0, "{err}");
    }
    let read_back = |node: &Node, conversation: &str| {
        let (code, r, err) = call(
            node,
            conversation,
            "workspace.read_file",
            r#"{"path":"notes/a.txt"}"#,
            &[],
        );
        assert_eq!(code, 0, "{conversation}: {err}");
        structured(&r)["content"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // Conversations whose ids differ only in `:` and `_` have workspaces of their own.
    assert_eq!(read_back(&first, "p:q"), "colon");
    assert_eq!(read_back(&first, "p_q"), "underscore");
    let kept = kept_sandboxes(&first.data);
    assert_eq!(kept.len(), 3, "one kept sandbox per conversation: {kept:?}");

    // A clean stop, then a SIGKILL: the files come back byte for byte each time.
    assert!(first.stop(libc::SIGTERM).success());
    let mut second = Node::start_with_data(config, &first.data);
    assert_eq!(read_back(&second, "w1"), content);
    let before_kill = workspace_dirs(&first.data);
    second.stop(libc::SIGKILL);
    let third = Node::start_with_data(config, &first.data);
    for (conversation, text) in files {
        assert_eq!(read_back(&third, conversation), text);
    }
    // What the killed run left is gone, except the kept workspaces (and their disks).
    let now = workspace_dirs(&first.data);
    for dir in &before_kill {
        assert_eq!(
            now.contains(dir),
            kept.contains(dir.trim_end_matches(".disk")),
            "{dir}: kept {kept:?}, before the kill {before_kill:?}, now {now:?}"
        );
    }
    assert_eq!(kept_sandboxes(&first.data), kept);

    // Deleting the conversation removes its workspace; a later write starts an empty one.
    let out = third.cli(&["conversations", "delete", "w1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while kept_sandboxes(&first.data).len() != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the workspace of w1 stays"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let gone: Vec<_> = kept
        .difference(&kept_sandboxes(&first.data))
        .cloned()
        .collect();
    let disk = format!("{}.disk", gone[0]);
    while workspace_dirs(&first.data)
        .iter()
        .any(|d| *d == gone[0] || *d == disk)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{} stays on disk",
            gone[0]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, r, err) = call(
        &third,
        "w1",
        "workspace.read_file",
        r#"{"path":"notes/a.txt"}"#,
        &[],
    );
    assert_ne!(code, 0, "w1's file is still there: {r}");
    assert!(r.to_string().contains("No such file"), "{r} {err}");
}
