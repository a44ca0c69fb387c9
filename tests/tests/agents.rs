//! Model agents end to end: a real `cadre serve`, a scripted OpenAI-compatible model server
//! (real HTTP, real wire format, every request counted) and a side-effecting MCP tool server on
//! the official Python SDK that records the idempotency key of every call.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cadre_tests::servers::{
    ModelServer, RecordServer, kill_points, record_call, wait_for_record_tool,
};
use cadre_tests::{Node, TempDir, mcp_dir};
use serde_json::{Value, json};

/// A node config with the model, the record server and `agents` (YAML child entries).
fn config(model: &ModelServer, record: &RecordServer, agents: &str) -> String {
    format!(
        r#"
version: v1
models:
  - id: scripted
    openai: {{ base_url: "http://127.0.0.1:{model}/v1", model: test-model }}
supervisor:
  strategy: one_for_one
  intensity: 5
  period_secs: 30
  children:
    - id: rec
      mcp: {{ url: "http://127.0.0.1:{record}/mcp", timeout_ms: 20000 }}
{agents}
"#,
        model = model.port,
        record = record.port,
    )
}

/// Waits until the conversation's exec is in one of `states`.
fn wait_state(node: &Node, conversation: &str, states: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = node.cli(&["conversations", "show", conversation, "-o", "json"]);
        if out.status.success() {
            let c: Value = serde_json::from_slice(&out.stdout).unwrap();
            if states.iter().any(|s| c["exec_state"] == *s) {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{conversation} never reached {states:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log(node: &Node, conversation: &str) -> Vec<Value> {
    node.json_lines(&["conversations", "log", conversation, "-o", "json"])
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

/// The reason of the exec's FAILED state change.
fn failure_reason(node: &Node, conversation: &str) -> String {
    wait_state(node, conversation, &["failed"]);
    log(node, conversation)
        .iter()
        .rev()
        .find(|e| e["state"] == "failed")
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .unwrap()
}

#[test]
fn a_multi_step_exec_journals_every_model_and_tool_call_and_completes() {
    let model = ModelServer::start(json!([
        record_call("first"),
        record_call("second"),
        {"content": "all recorded"},
    ]));
    let record = RecordServer::start(0);
    let agents = r#"
    - id: scribe
      agent: { model: scripted, system_prompt: "You record notes.", tools: ["rec.*"] }
"#;
    let node = Node::start(&config(&model, &record, agents));
    wait_for_record_tool(&node);

    let out = node.cli(&["exec", "--agent", "scribe", "--input", "record two notes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "all recorded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let conversation = stderr
        .split_whitespace()
        .find_map(|w| w.strip_prefix("conversation="))
        .expect("conversation= on stderr")
        .to_string();

    let events = log(&node, &conversation);
    assert_eq!(
        types(&events),
        [
            "input_received",
            "exec_state_changed",
            "model_called",
            "tool_called",
            "tool_returned",
            "model_called",
            "tool_called",
            "tool_returned",
            "model_called",
            "output_emitted",
            "exec_state_changed",
        ]
    );
    let called: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "tool_called")
        .collect();
    assert_eq!(called[0]["tool"], "rec.record");
    let exec = events[0]["exec_id"].as_str().unwrap();
    assert_eq!(
        called[0]["idempotency_key"],
        format!("{conversation}/{exec}/1.1")
    );
    let model_called = &events[2];
    assert!(model_called["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(
        model_called["response_json"]
            .as_str()
            .unwrap()
            .contains("rec__record"),
        "the full response is journaled"
    );
    assert_eq!(model.counts(), [1, 1, 1], "each reply requested once");
    let requests = model.requests();
    assert_eq!(requests[0]["messages"][0]["content"], "You record notes.");
    assert_eq!(requests[0]["tools"][0]["function"]["name"], "rec__record");
    // The second request carries the first call and its result.
    let second = requests[1]["messages"].as_array().unwrap();
    assert_eq!(second[2]["tool_calls"][0]["id"], "call_0_0");
    assert_eq!(second[3]["role"], "tool");
    assert_eq!(second[3]["tool_call_id"], "call_0_0");
    assert_eq!(second[3]["content"], "recorded first");
    let effects = record.effects();
    assert_eq!(effects.len(), 2);
    assert!(effects.iter().all(|e| e["applied"] == true));
}

#[test]
fn sigkill_mid_exec_resumes_on_restart_without_repeating_a_model_call_or_a_side_effect() {
    let notes = ["a", "b", "c", "d"];
    let mut script: Vec<Value> = notes.iter().map(|n| record_call(n)).collect();
    script.push(json!({"content": "done"}));
    let model = ModelServer::start(Value::Array(script));
    // Slow enough that a kill lands while a call runs.
    let record = RecordServer::start(700);
    let agents = r#"
    - id: scribe
      agent: { model: scripted, tools: ["rec.*"] }
"#;
    let config = config(&model, &record, agents);
    let data_dir = TempDir::new("agents-crash");
    let data = data_dir.path().join("data");
    let mut node = Node::start_with_data(&config, &data);
    wait_for_record_tool(&node);
    let mut exec = node.exec_in_background("scribe", "crashy", "record four notes");

    // Kill the node at three random points: right after the n-th ToolCalled (the call is
    // running) or the n-th ModelCalled (its tool call starts); restart it each time. Points are
    // picked where no model request is in flight: a request cut off by a crash is asked again
    // by design (its reply was never journaled).
    let kills = kill_points();
    eprintln!("kill points: {kills:?}");
    for &(kind, nth) in &kills {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let events = node.log_so_far("crashy");
            if events.iter().filter(|e| e["type"] == kind).count() >= nth {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {nth} {kind}:\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        node.stop(libc::SIGKILL);
        let _ = exec.wait();
        node = Node::start_with_data(&config, &data);
        wait_for_record_tool(&node);
        exec = Command::new("true").spawn().unwrap();
    }
    let _ = exec.wait();
    let c = wait_state(&node, "crashy", &["completed", "failed"]);
    assert_eq!(c["exec_state"], "completed", "{c}\n{}", node.log());
    let events = log(&node, "crashy");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gap");
    assert_eq!(
        model.counts(),
        [1, 1, 1, 1, 1],
        "each scripted reply requested exactly once"
    );
    let returned = events
        .iter()
        .filter(|e| e["type"] == "tool_returned")
        .count();
    assert_eq!(returned, 4, "one result per call");
    let effects = record.effects();
    let applied: Vec<&str> = effects
        .iter()
        .filter(|e| e["applied"] == true)
        .map(|e| e["note"].as_str().unwrap())
        .collect();
    assert_eq!(applied, notes, "each side effect applied once: {effects:?}");
    // A call interrupted by a kill was made again with the same key (and not applied twice).
    let keys: std::collections::BTreeSet<&str> =
        effects.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 4, "{effects:?}");
    assert!(
        effects.len() > 4,
        "a retried call reached the tool: {effects:?}"
    );
}

#[test]
fn every_governance_limit_ends_the_exec_failed_with_its_reason() {
    let record = RecordServer::start(0);

    // One model server per case keeps their scripts apart.
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "iterations",
            json!([record_call("1"), record_call("2"), record_call("3")]),
            "max_iterations: 2",
            "max_iterations: 2 model calls made, limit 2",
        ),
        (
            "budget",
            json!([{"tool_calls": [{"name": "rec__record", "arguments": {"note": "x"}}],
                    "usage": {"prompt_tokens": 900, "completion_tokens": 200}}]),
            "token_budget: 1000",
            "token_budget: 1100 tokens used, limit 1000",
        ),
        (
            "repeats",
            json!([
                record_call("same"),
                record_call("same"),
                record_call("same")
            ]),
            "max_repeats: 3",
            "max_repeats: `rec.record` asked for 3 times with the same arguments, limit 3",
        ),
        (
            "exectime",
            json!([{"content": "late", "delay_ms": 3000}]),
            "exec_timeout_secs: 1",
            "exec_timeout_secs: the model call did not answer within the exec's limit of 1 s",
        ),
    ];
    for (name, script, limit, reason) in cases {
        let model = ModelServer::start(script);
        let agents = format!(
            "    - id: {name}\n      agent: {{ model: scripted, tools: [\"rec.*\"], {limit} }}\n"
        );
        let node = Node::start(&config(&model, &record, &agents));
        wait_for_record_tool(&node);
        let out = node.exec(name, name, "go");
        assert_eq!(out.status.code(), Some(1), "{name}: the exec failed");
        assert_eq!(failure_reason(&node, name), reason, "{name}");
    }

    // Tool timeout: a slow tool.
    let slow = RecordServer::start(3000);
    let model = ModelServer::start(json!([record_call("slow")]));
    let agents = "    - id: slowtool\n      agent: { model: scripted, tools: [\"rec.*\"], tool_timeout_ms: 300 }\n";
    let node = Node::start(&config(&model, &slow, agents));
    wait_for_record_tool(&node);
    let _ = node.exec("slowtool", "t", "go");
    assert_eq!(
        failure_reason(&node, "t"),
        "tool_timeout_ms: `rec.record` did not answer within 300 ms"
    );
    let events = log(&node, "t");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "tool_returned" && e["error"] == "timed out after 300 ms"),
        "the timed-out call has its result"
    );

    // Rate limit: one exec per minute.
    let model = ModelServer::start(json!([{"content": "one"}, {"content": "two"}]));
    let agents = "    - id: rated\n      agent: { model: scripted, execs_per_minute: 1 }\n";
    let node = Node::start(&config(&model, &record, agents));
    let first = node.exec("rated", "r1", "a");
    assert!(first.status.success());
    let _ = node.exec("rated", "r2", "b");
    assert_eq!(
        failure_reason(&node, "r2"),
        "execs_per_minute: agent `rated` started 1 execs in the last minute, limit 1"
    );
    assert_eq!(model.counts(), [1], "the limited exec asked no model");

    // Compaction: a prompt past the threshold makes the next step summarise first.
    let model = ModelServer::start(json!([
        {"tool_calls": [{"name": "rec__record", "arguments": {"note": "long"}}],
         "usage": {"prompt_tokens": 5000, "completion_tokens": 10}},
        {"content": "the user wanted a note recorded; it was", "usage": {"prompt_tokens": 10, "completion_tokens": 10}},
        {"content": "finished", "usage": {"prompt_tokens": 10, "completion_tokens": 10}},
    ]));
    let agents = "    - id: compact\n      agent: { model: scripted, tools: [\"rec.*\"], compact_at_tokens: 4000 }\n";
    let node = Node::start(&config(&model, &record, agents));
    wait_for_record_tool(&node);
    let out = node.exec("compact", "k", "go");
    assert!(out.status.success(), "{}", node.log());
    let calls: Vec<Value> = log(&node, "k")
        .into_iter()
        .filter(|e| e["type"] == "model_called")
        .collect();
    assert_eq!(
        calls
            .iter()
            .map(|c| c["compaction"].as_bool().unwrap())
            .collect::<Vec<_>>(),
        [false, true, false]
    );
    let requests = model.requests();
    let summarise = requests[1]["messages"].as_array().unwrap();
    assert!(
        summarise.last().unwrap()["content"]
            .as_str()
            .unwrap()
            .contains("Summarise")
    );
    let after = requests[2]["messages"].as_array().unwrap();
    assert_eq!(after.len(), 2, "system prompt and the summary: {after:?}");
    assert!(
        after[1]["content"]
            .as_str()
            .unwrap()
            .contains("the user wanted a note recorded")
    );
}

#[test]
fn a_tool_that_needs_approval_pauses_the_exec_until_it_is_approved_or_declined() {
    let model = ModelServer::start(json!([
        record_call("guarded"),
        {"content": "recorded after approval"},
        record_call("refused"),
        {"content": "it was declined"},
    ]));
    let record = RecordServer::start(0);
    let agents = r#"
    - id: careful
      agent: { model: scripted, tools: ["rec.*"], require_approval: ["rec.record"] }
"#;
    let node = Node::start(&config(&model, &record, agents));
    wait_for_record_tool(&node);

    let mut exec = node.exec_in_background("careful", "ap", "record a guarded note");
    let c = wait_state(&node, "ap", &["waiting_approval"]);
    assert_eq!(c["waiting_call_id"], "1.1");
    assert_eq!(c["waiting_tool"], "rec.record");
    assert!(
        record.effects().is_empty(),
        "nothing ran before the approval"
    );
    // A new exec in the conversation is refused while it waits.
    let second = node.exec("careful", "ap", "x");
    assert_eq!(second.status.code(), Some(1));
    // An approval for another call is refused and writes nothing.
    let before = log(&node, "ap").len();
    let wrong = node.cli(&["approve", "--conversation", "ap", "--call", "9.9"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("waits on call 1.1"));
    assert_eq!(log(&node, "ap").len(), before);

    let ok = node.cli(&["approve", "--conversation", "ap", "--reason", "looks fine"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        exec.wait().unwrap().success(),
        "the exec's stream ends when it completes"
    );
    wait_state(&node, "ap", &["completed"]);
    let events = log(&node, "ap");
    let decided = events
        .iter()
        .find(|e| e["type"] == "approval_decided")
        .unwrap();
    assert_eq!(decided["approved"], true);
    assert_eq!(decided["reason"], "looks fine");
    assert_eq!(record.effects().len(), 1);
    let again = node.cli(&["approve", "--conversation", "ap"]);
    assert_eq!(again.status.code(), Some(1), "nothing waits any more");

    // Declined: the agent gets an error for the call and goes on.
    let mut exec = node.exec_in_background("careful", "ap", "record another");
    wait_state(&node, "ap", &["waiting_approval"]);
    let no = node.cli(&[
        "approve",
        "--conversation",
        "ap",
        "--decline",
        "--reason",
        "not now",
    ]);
    assert!(no.status.success());
    assert!(exec.wait().unwrap().success());
    wait_state(&node, "ap", &["completed"]);
    assert_eq!(record.effects().len(), 1, "the declined call was not made");
    let requests = model.requests();
    let last = requests[3]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["role"], "tool");
    assert_eq!(
        last["content"],
        "error: the call was declined by its approver: not now"
    );
    assert_eq!(model.counts(), [1, 1, 1, 1]);
}

#[test]
fn a_fork_with_a_patched_prompt_resumes_from_its_step_without_rerunning_earlier_ones() {
    let model = ModelServer::start(json!([
        record_call("one"),
        record_call("two"),
        {"content": "original done"},
        record_call("branch"),
        {"content": "branch done"},
    ]));
    let record = RecordServer::start(0);
    let agents = r#"
    - id: scribe
      agent: { model: scripted, system_prompt: "original prompt", tools: ["rec.*"] }
"#;
    let node = Node::start(&config(&model, &record, agents));
    wait_for_record_tool(&node);
    let out = node.exec("scribe", "src", "go");
    assert!(out.status.success());
    let events = log(&node, "src");
    // Fork right after the first tool result: step 1 is done, step 2 is not.
    let at = events
        .iter()
        .find(|e| e["type"] == "tool_returned")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    let patch = node.dir.path().join("patch.yaml");
    std::fs::write(&patch, "system_prompt: patched prompt\n").unwrap();
    let forked = node.cli(&[
        "fork",
        "--conversation",
        "src",
        "--at-seq",
        &at.to_string(),
        "--to",
        "branch",
        "--patch",
        patch.to_str().unwrap(),
    ]);
    assert!(
        forked.status.success(),
        "{}",
        String::from_utf8_lossy(&forked.stderr)
    );
    let before = model.counts();
    let resumed = node.cli(&["exec", "--conversation", "branch", "--resume"]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&resumed.stdout).trim(),
        "branch done"
    );

    let requests = model.requests();
    assert_eq!(before, [1, 1, 1]);
    assert_eq!(
        model.counts(),
        [1, 1, 1, 1, 1],
        "no request for the steps before the fork"
    );
    for r in &requests[3..] {
        assert_eq!(r["messages"][0]["content"], "patched prompt");
    }
    // The branch's first request goes on from the first tool result.
    let first = requests[3]["messages"].as_array().unwrap();
    assert_eq!(
        first.len(),
        4,
        "system, user, step 1 call, its result: {first:?}"
    );
    assert_eq!(first[3]["content"], "recorded one");
    let notes: Vec<String> = record
        .effects()
        .iter()
        .map(|e| e["note"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(notes, ["one", "two", "branch"]);

    // A bad patch is refused with its file and line, and writes nothing.
    std::fs::write(&patch, "system_prompt: x\ntemperature: 2\n").unwrap();
    let bad = node.cli(&[
        "fork",
        "--conversation",
        "src",
        "--to",
        "bad",
        "--patch",
        patch.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("patch.yaml:2:"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    std::fs::write(&patch, "model: nope\n").unwrap();
    let bad = node.cli(&[
        "fork",
        "--conversation",
        "src",
        "--to",
        "bad",
        "--patch",
        patch.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("patch.model: unknown model `nope`"));
    assert_eq!(
        node.cli(&["conversations", "show", "bad"]).status.code(),
        Some(1)
    );
}

/// Starts an example agent's process and returns it with the address it printed.
fn start_agent(mut command: Command) -> (Child, String) {
    let mut child = command
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the example agent");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the agent said {line:?}"))
        .to_string();
    (child, addr)
}

#[test]
fn both_example_remote_agents_complete_an_exec_with_a_tool_call() {
    let rust = Command::new(cadre_tests::workspace_bin(
        "remote-agent-rust",
        "remote-agent-rust",
    ));
    let mut python = Command::new(mcp_dir().join("grpc/bin/python3"));
    python.arg(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/remote-agent-python/agent.py"),
    );
    let (mut rust, rust_addr) = start_agent(rust);
    let (mut python, python_addr) = start_agent(python);
    let config = format!(
        r#"
version: v1
supervisor:
  children:
    - id: rusty
      agent: {{ remote: "http://{rust_addr}", tools: ["skills.*"] }}
    - id: pythonic
      agent: {{ remote: "http://{python_addr}", tools: ["skills.*"] }}
"#
    );
    let node = Node::start(&config);
    for (agent, language) in [("rusty", "rust"), ("pythonic", "python")] {
        let out = node.exec(agent, agent, "list the skills");
        assert!(
            out.status.success(),
            "{agent}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            node.log()
        );
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            said.contains(&format!("{language} agent: skills.list_skills returned")),
            "{agent}: {said}"
        );
        let events = log(&node, agent);
        assert_eq!(
            types(&events),
            [
                "input_received",
                "exec_state_changed",
                "model_called",
                "tool_called",
                "tool_returned",
                "model_called",
                "output_emitted",
                "exec_state_changed",
            ],
            "{agent}"
        );
        let called = &events[3];
        assert_eq!(called["tool"], "skills.list_skills");
        assert!(
            events[2]["model"]
                .as_str()
                .unwrap()
                .starts_with("remote agent at http://")
        );
    }
    // An agent that fails the exec: its reason is recorded.
    let _ = rust.kill();
    // SIGTERM: the agent exits normally and removes the stubs it generated.
    unsafe { libc::kill(python.id() as i32, libc::SIGTERM) };
    let (mut picky, picky_addr) = {
        let mut c = Command::new(cadre_tests::workspace_bin(
            "remote-agent-rust",
            "remote-agent-rust",
        ));
        c.env("AGENT_TOOL", "workspace.run");
        start_agent(c)
    };
    let config = format!(
        "version: v1\nsupervisor:\n  children:\n    - id: picky\n      agent: {{ remote: \"http://{picky_addr}\", tools: [\"skills.*\"] }}\n"
    );
    let node = Node::start(&config);
    let out = node.exec("picky", "p", "x");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        failure_reason(&node, "p"),
        "remote agent `picky`: it failed the exec: tool `workspace.run` is not offered to this agent"
    );
    let _ = picky.kill();
    let _ = rust.wait();
    let _ = python.wait();
    let _ = picky.wait();
}

/// A harness for a process agent: JSON lines over stdio.
const HARNESS: &str = r#"
import json, sys
def send(m):
    print(json.dumps(m), flush=True)
def call(tool, arguments):
    send({"type": "tool_call", "tool": tool, "arguments": arguments})
    return json.loads(sys.stdin.readline())
start = json.loads(sys.stdin.readline())
if start["text"] == "fail":
    sys.exit(3)
send({"type": "output", "text": "harness got: " + start["text"]})
wrote = call("workspace.write_file", {"path": "notes.txt", "content": start["text"]})
read = call("workspace.read_file", {"path": "notes.txt"})
send({"type": "output", "text": "file says: " + read["result"]["structuredContent"]["content"]})
denied = call("workspace.run", {"command": "true"})
send({"type": "output", "text": "run: " + denied.get("error", "allowed?")})
"#;

#[test]
fn a_process_agent_runs_in_the_conversations_sandbox_with_journaled_outputs_and_tool_calls() {
    let config = format!(
        r#"
version: v1
supervisor:
  children:
    - id: harness
      agent: {{ command: ["/usr/bin/python3", "-c", {script}], tools: ["workspace.*"] }}
"#,
        script = serde_json::to_string(HARNESS).unwrap()
    );
    let node = Node::start(&config);
    let out = node.exec("harness", "h", "hello");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[0], "harness got: hello");
    assert_eq!(lines[1], "file says: hello");
    assert_eq!(
        lines[2],
        "run: tool `workspace.run` needs an approval, which a process agent cannot wait for"
    );
    let events = log(&node, "h");
    let called: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "tool_called")
        .map(|e| e["tool"].as_str().unwrap())
        .collect();
    assert_eq!(called, ["workspace.write_file", "workspace.read_file"]);
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "tool_returned")
            .count(),
        3
    );

    let out = node.exec("harness", "h2", "fail");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        failure_reason(&node, "h2"),
        "process agent: exited with status 3"
    );

    // A spawned agent naming a model the node does not have is refused and starts nothing.
    let spec = node.dir.path().join("agent.yaml");
    std::fs::write(&spec, "id: lost\nagent: { model: nope }\n").unwrap();
    let spawned = node.cli(&["actors", "spawn", "-f", spec.to_str().unwrap()]);
    assert_eq!(spawned.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&spawned.stderr)
            .contains("agent.model: unknown model `nope` (the node's models: none)"),
        "{}",
        String::from_utf8_lossy(&spawned.stderr)
    );
    assert!(!String::from_utf8_lossy(&node.cli(&["tree"]).stdout).contains("lost"));
}

#[test]
fn an_exec_agent_that_is_restarted_mid_call_resumes_from_the_log() {
    let model = ModelServer::start(json!([record_call("slow"), {"content": "finished"}]));
    let record = RecordServer::start(1500);
    let agents = r#"
    - id: scribe
      agent: { model: scripted, tools: ["rec.*"] }
"#;
    let node = Node::start(&config(&model, &record, agents));
    wait_for_record_tool(&node);
    let mut exec = node.exec_in_background("scribe", "rs", "go");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exec_id = loop {
        let events = node.log_so_far("rs");
        if events.iter().any(|e| e["type"] == "tool_called") {
            break events[0]["exec_id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no tool call");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Its supervisor stops and starts it while the call runs: it reads the log again and makes
    // the started call again with the same key.
    let path = format!("system/agents/{exec_id}");
    let restarted = node.cli(&["actors", "restart", &path]);
    assert!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    assert!(exec.wait().unwrap().success());
    wait_state(&node, "rs", &["completed"]);
    assert_eq!(model.counts(), [1, 1]);
    let effects = record.effects();
    assert_eq!(effects.len(), 2, "the call was made twice: {effects:?}");
    assert_eq!(effects[0]["key"], effects[1]["key"], "with one key");
    assert_eq!(effects.iter().filter(|e| e["applied"] == true).count(), 1);
    let returned = log(&node, "rs")
        .iter()
        .filter(|e| e["type"] == "tool_returned")
        .count();
    assert_eq!(returned, 1);
    // Once the exec has ended, its agent is gone from the tree.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node
        .cli(&["actors", "ls", "-o", "json"])
        .stdout
        .windows(exec_id.len())
        .any(|w| w == exec_id.as_bytes())
    {
        assert!(Instant::now() < deadline, "the ended agent is still listed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_node_stopped_during_an_exec_exits_promptly_and_the_next_run_finishes_the_exec() {
    let model = ModelServer::start(json!([record_call("slow"), {"content": "finished"}]));
    let record = RecordServer::start(3000);
    let agents = "    - id: scribe\n      agent: { model: scripted, tools: [\"rec.*\"] }\n";
    let config = config(&model, &record, agents);
    let data_dir = TempDir::new("agents-stop");
    let data = data_dir.path().join("data");
    let mut node = Node::start_with_data(&config, &data);
    wait_for_record_tool(&node);
    let mut exec = node.exec_in_background("scribe", "st", "go");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node
        .log_so_far("st")
        .iter()
        .any(|e| e["type"] == "tool_called")
    {
        assert!(Instant::now() < deadline, "no tool call");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM while the exec's stream is open and its tool call runs.
    let stopping = Instant::now();
    assert!(node.stop(libc::SIGTERM).success());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
    let _ = exec.wait();
    let node = Node::start_with_data(&config, &data);
    let c = wait_state(&node, "st", &["completed", "failed"]);
    assert_eq!(c["exec_state"], "completed", "{}", node.log());
    assert_eq!(model.counts(), [1, 1]);
}

#[test]
fn an_open_exec_whose_agent_is_gone_after_a_restart_ends_failed_naming_it() {
    // A model endpoint that accepts connections and never answers: the exec stays running.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = format!(
        "version: v1\nmodels:\n  - id: silent\n    openai: {{ base_url: \"http://127.0.0.1:{}/v1\", model: m }}\nsupervisor:\n  children:\n    - id: slow\n      agent: {{ model: silent }}\n",
        silent.local_addr().unwrap().port()
    );
    let data_dir = TempDir::new("agents-gone");
    let data = data_dir.path().join("data");
    let mut node = Node::start_with_data(&config, &data);
    let mut exec = node.exec_in_background("slow", "orphan", "hello");
    wait_state(&node, "orphan", &["running"]);
    node.stop(libc::SIGKILL);
    let _ = exec.wait();

    // The next run has no agent `slow`: the exec ends FAILED saying so, and the
    // conversation takes new execs.
    let node = Node::start_with_data("version: v1\n", &data);
    let reason = failure_reason(&node, "orphan");
    assert!(reason.contains("agent `slow` no longer exists"), "{reason}");
    let out = node.exec("echo", "orphan", "again");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cadre certs init DIR --host HOST`: the CA and node certificate files.
fn certs(dir: &Path, host: &str) {
    let out = Command::new(cadre_tests::cadre_bin())
        .args(["certs", "init"])
        .arg(dir)
        .args(["--host", host])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_model_agent_and_an_mcp_server_work_over_https_and_bad_certificates_are_named() {
    let dir = TempDir::new("https");
    let good = dir.path().join("good");
    certs(&good, "127.0.0.1");
    let (cert, key, ca) = (
        good.join("node.crt"),
        good.join("node.key"),
        good.join("ca.crt"),
    );
    let model = ModelServer::start_tls(
        json!([record_call("over tls"), {"content": "done over tls"}]),
        &cert,
        &key,
    );
    let record = RecordServer::start_tls(&cert, &key);
    let config = format!(
        r#"
version: v1
models:
  - id: scripted
    openai: {{ base_url: "https://127.0.0.1:{model}/v1", model: test-model, ca_file: "{ca}" }}
supervisor:
  children:
    - id: rec
      mcp: {{ url: "https://127.0.0.1:{record}/mcp", timeout_ms: 20000, ca_file: "{ca}" }}
    - id: scribe
      agent: {{ model: scripted, tools: ["rec.*"] }}
"#,
        model = model.port,
        record = record.port,
        ca = ca.display(),
    );
    let node = Node::start(&config);
    wait_for_record_tool(&node);
    let out = node.exec("scribe", "tls", "go");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("done over tls"));
    let called = types(&log(&node, "tls"))
        .iter()
        .filter(|t| *t == "model_called")
        .count();
    assert_eq!(called, 2, "two steps");
    let effects = record.effects();
    assert!(
        effects.iter().any(|e| e["note"] == "over tls"),
        "{effects:?}"
    );

    // Without the CA the certificate's issuer is unknown; for another name it does not match.
    let other = dir.path().join("other");
    certs(&other, "other.example");
    let misnamed = ModelServer::start_tls(
        json!([{"content": "never"}]),
        &other.join("node.crt"),
        &other.join("node.key"),
    );
    for (port, ca_file, problem) in [
        (model.port, String::new(), "unknown issuer"),
        (
            misnamed.port,
            format!(", ca_file: \"{}\"", other.join("ca.crt").display()),
            "name mismatch",
        ),
    ] {
        let config = format!(
            "version: v1\nmodels:\n  - id: scripted\n    openai: {{ base_url: \"https://127.0.0.1:{port}/v1\", model: test-model{ca_file} }}\nsupervisor:\n  children:\n    - id: scribe\n      agent: {{ model: scripted }}\n"
        );
        let node = Node::start(&config);
        let out = node.exec("scribe", "bad", "go");
        assert_eq!(out.status.code(), Some(1));
        let reason = failure_reason(&node, "bad");
        assert!(
            reason.contains(&format!("model endpoint https://127.0.0.1:{port}/v1/chat/completions: TLS certificate refused: {problem}")),
            "{reason}"
        );
    }
}
