//! MCP servers as supervised actors, against real servers from the registries (installed by
//! `scripts/setup.sh`): `@modelcontextprotocol/server-everything` (npm) and `mcp-server-time`
//! (PyPI), each running in a real gVisor sandbox of a real `cadre serve`, driven through the
//! CLI.

use std::time::{Duration, Instant};

use cadre_tests::{Node, everything_command, find, kill_in_sandbox, time_command};
use serde_json::Value;

/// Servers start slowly under gVisor's ptrace platform (Python's imports take seconds).
const START: Duration = Duration::from_secs(120);

fn running(tree: &Value, paths: &[&str]) -> bool {
    paths
        .iter()
        .all(|p| find(tree, p)["status"] == "running" && find(tree, p)["pid"].is_u64())
}

fn tools(node: &Node) -> Vec<Value> {
    node.json_lines(&["tools", "ls", "-o", "json"])
}

fn names(node: &Node) -> Vec<String> {
    tools(node)
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// `cadre tools call NAME --args ARGS -o json`: exit code, parsed stdout (if any), stderr.
fn call(node: &Node, name: &str, args: &str) -> (i32, Value, String) {
    let out = node.cli(&["tools", "call", name, "--args", args, "-o", "json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        value,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The first text block of an MCP result.
fn text(response: &Value) -> String {
    response["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {response}"))
        .to_string()
}

/// The conversation's events as `conversations log -o json` prints them.
fn log(node: &Node, conversation: &str) -> Vec<Value> {
    node.json_lines(&["conversations", "log", conversation, "-o", "json"])
}

/// A server on the official Python SDK (installed with mcp-server-time) whose one tool answers
/// with the `_meta` of its request.
const META_SERVER: &str = r#"
import json
from mcp.server.mcpserver import MCPServer, Context
server = MCPServer("meta")
@server.tool()
def meta(ctx: Context) -> str:
    "Returns the request's _meta."
    m = ctx.request_context.meta
    return json.dumps(m if isinstance(m, dict) else m.model_dump(by_alias=True, exclude_none=True))
server.run()
"#;

#[test]
fn tools_of_real_mcp_servers_are_listed_checked_called_and_journaled() {
    let config = format!(
        r#"
version: v1
sandbox:
  warm_pool: {{ min: 1, max: 4 }}
supervisor:
  children:
    - id: tools
      supervisor:
        strategy: one_for_one
        children:
          - id: time
            mcp: {{ command: {time} }}
          - id: everything
            mcp: {{ command: {everything}, timeout_ms: 20000 }}
          - id: meta
            mcp: {{ command: [{python}, -c, {meta}] }}
"#,
        time = time_command(),
        everything = everything_command(),
        python = cadre_tests::mcp_dir().join("time/bin/python3").display(),
        meta = serde_json::to_string(META_SERVER).unwrap(),
    );
    let node = Node::start(&config);
    let tree = node.wait_tree("the servers", START, |t| {
        running(
            t,
            &[
                "root/tools/time",
                "root/tools/everything",
                "root/tools/meta",
            ],
        )
    });
    // Both run in gVisor, in one sandbox of their tenant.
    let (time, everything) = (
        find(&tree, "root/tools/time"),
        find(&tree, "root/tools/everything"),
    );
    assert_eq!(time["kind"], "mcp");
    let sandbox = time["placement"].as_str().expect("time is placed");
    assert!(sandbox.starts_with("sbx-"), "{sandbox}");
    assert_eq!(everything["placement"], sandbox);

    let listed = tools(&node);
    let get_time = listed
        .iter()
        .find(|t| t["name"] == "time.get_current_time")
        .unwrap_or_else(|| panic!("{listed:#?}"));
    assert_eq!(get_time["server"], "root/tools/time");
    assert!(get_time["input_schema"]["properties"]["timezone"].is_object());
    let names = names(&node);
    for tool in ["time.convert_time", "everything.echo", "everything.get-sum"] {
        assert!(names.iter().any(|n| n == tool), "{tool} not in {names:?}");
    }
    // server-everything announces `tools/list_changed` as it starts: the list is read again.
    let log_text = node.log();
    assert!(
        log_text.contains("tools changed namespace=\"everything\""),
        "{log_text}"
    );
    let table = node.cli(&["tools", "ls"]);
    assert!(String::from_utf8_lossy(&table.stdout).starts_with("TOOL"));

    // Valid calls.
    let (code, r, err) = call(
        &node,
        "time.get_current_time",
        r#"{"timezone":"Asia/Tokyo"}"#,
    );
    assert_eq!(code, 0, "{err}");
    let now: Value = serde_json::from_str(&text(&r)).unwrap();
    assert_eq!(now["timezone"], "Asia/Tokyo");
    assert!(
        now["datetime"].as_str().unwrap().ends_with("+09:00"),
        "{now}"
    );
    let (code, r, err) = call(
        &node,
        "time.convert_time",
        r#"{"source_timezone":"UTC","time":"12:00","target_timezone":"Asia/Tokyo"}"#,
    );
    assert_eq!(code, 0, "{err}");
    assert!(text(&r).contains("21:00"), "{r}");
    let (code, r, err) = call(&node, "everything.echo", r#"{"message":"hello, cadre"}"#);
    assert_eq!(code, 0, "{err}");
    assert_eq!(text(&r), "Echo: hello, cadre");
    let (code, r, err) = call(&node, "everything.get-sum", r#"{"a":2,"b":40}"#);
    assert_eq!(code, 0, "{err}");
    assert!(text(&r).contains("42"), "{r}");
    let key = r["idempotency_key"].as_str().unwrap().to_string();
    assert!(
        key.starts_with("cadre.tools/call-") && key.ends_with("/1"),
        "{key}"
    );

    // Every call so far is journaled: ToolCalled then ToolReturned, with the key.
    let before = log(&node, "cadre.tools");
    assert_eq!(before.len(), 8, "{before:#?}");
    let called = before
        .iter()
        .find(|e| e["idempotency_key"] == key.as_str())
        .unwrap_or_else(|| panic!("{before:#?}"));
    assert_eq!(called["type"], "tool_called");
    assert_eq!(called["tool"], "everything.get-sum");
    let returned = before.last().unwrap();
    assert_eq!(returned["type"], "tool_returned");
    assert_eq!(returned["call_id"], called["call_id"]);
    assert!(
        returned["result_json"].as_str().unwrap().contains("42"),
        "{returned}"
    );

    // Bad arguments: exit 2, the schema's complaint, no call made and nothing journaled.
    let (code, _, err) = call(&node, "everything.get-sum", r#"{"a":"two"}"#);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("\"b\" is a required property"), "{err}");
    assert!(err.contains("/a") && err.contains("number"), "{err}");
    let (code, _, err) = call(&node, "time.get_current_time", "[1, 2]");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("must be a JSON object"), "{err}");
    let (code, _, err) = call(&node, "time.get_current_time", "{not json");
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = call(&node, "time.no_such_tool", "{}");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("NotFound") && err.contains("time.no_such_tool"),
        "{err}"
    );
    assert_eq!(log(&node, "cadre.tools").len(), before.len());

    // A tool that reports an error itself: a journaled result flagged as an error, exit 1.
    let (code, r, _) = call(
        &node,
        "time.get_current_time",
        r#"{"timezone":"Mars/Olympus"}"#,
    );
    assert_eq!(code, 1);
    assert_eq!(r["is_error"], true, "{r}");
    assert!(text(&r).contains("Mars/Olympus"), "{r}");
    // … and the log records it as the tool's error, not `ok` (issue 21).
    let returned = log(&node, "cadre.tools")
        .into_iter()
        .rfind(|e| e["type"] == "tool_returned")
        .expect("a ToolReturned");
    assert_eq!(returned["is_error"], true, "{returned}");
    let text_log = node.cli(&["conversations", "log", "cadre.tools"]);
    let last = String::from_utf8_lossy(&text_log.stdout)
        .lines()
        .rfind(|l| l.contains("tool_returned"))
        .unwrap_or_default()
        .to_string();
    assert!(last.contains("tool error"), "{last}");

    // The idempotency key reaches the server in the request's `_meta`.
    let (code, r, err) = call(&node, "meta.meta", "{}");
    assert_eq!(code, 0, "{err}");
    let meta: Value = serde_json::from_str(&text(&r)).unwrap();
    assert_eq!(
        meta["cadre/idempotency-key"], r["idempotency_key"],
        "{meta}"
    );

    // Journaled in the caller's conversation when it names one.
    let out = node.cli(&[
        "tools",
        "call",
        "everything.echo",
        "--args",
        r#"{"message":"x"}"#,
        "--conversation",
        "c-tools",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Echo: x");
    assert_eq!(log(&node, "c-tools").len(), 2);
}

#[test]
fn a_killed_mcp_server_is_restarted_its_tools_come_back_and_its_in_flight_call_fails() {
    let config = format!(
        r#"
version: v1
sandbox:
  warm_pool: {{ min: 1, max: 2 }}
supervisor:
  strategy: one_for_one
  intensity: 3
  children:
    - id: slow
      mcp: {{ command: {everything}, timeout_ms: 60000 }}
"#,
        everything = everything_command(),
    );
    let node = Node::start(&config);
    let tree = node.wait_tree("the server", START, |t| running(t, &["root/slow"]));
    let slow = find(&tree, "root/slow");
    let (pid, sandbox) = (
        slow["pid"].as_u64().unwrap() as u32,
        slow["placement"].clone(),
    );
    assert!(
        names(&node)
            .iter()
            .any(|n| n == "slow.trigger-long-running-operation")
    );

    // A call that takes 50 s, cut short by the server's death.
    let server = node.addr.clone();
    let in_flight = std::thread::spawn(move || {
        let started = Instant::now();
        let out = cadre_tests::cli_with_server(
            &server,
            &[
                "tools",
                "call",
                "slow.trigger-long-running-operation",
                "--args",
                r#"{"duration":50,"steps":50}"#,
            ],
        );
        (out, started.elapsed())
    });
    std::thread::sleep(Duration::from_secs(2));
    kill_in_sandbox(&node.data, sandbox.as_str().unwrap(), pid);
    let (out, took) = in_flight.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unavailable") && err.contains("slow.trigger-long-running-operation"),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "the call hung for {took:?}");

    // Restarted per policy: a new process, restart count 1; its tools were removed and are back.
    let tree = node.wait_tree("the restart", START, |t| {
        find(t, "root/slow")["restarts"] == 1 && running(t, &["root/slow"])
    });
    assert_ne!(find(&tree, "root/slow")["pid"], pid);
    assert!(names(&node).iter().any(|n| n == "slow.echo"));
    let log_text = node.log();
    assert!(
        log_text.contains("tools removed namespace=\"slow\""),
        "{log_text}"
    );
    assert!(log_text.contains("reason=killed"), "{log_text}");
    let (code, r, err) = call(&node, "slow.echo", r#"{"message":"again"}"#);
    assert_eq!(code, 0, "{err}");
    assert_eq!(text(&r), "Echo: again");
    // The cut-short call is journaled with its error.
    let events = log(&node, "cadre.tools");
    assert!(
        events.iter().any(|e| e["error"]
            .as_str()
            .is_some_and(|m| m.contains("unavailable"))),
        "{events:#?}"
    );
}

#[test]
fn three_mcp_servers_under_rest_for_one_restart_as_otp_says_when_the_middle_one_dies() {
    let everything = everything_command();
    let config = format!(
        r#"
version: v1
sandbox:
  warm_pool: {{ min: 1, max: 2 }}
supervisor:
  children:
    - id: tools
      supervisor:
        strategy: rest_for_one
        intensity: 2
        period_secs: 30
        children:
          - id: first
            mcp: {{ command: {everything} }}
          - id: middle
            mcp: {{ command: {everything} }}
          - id: last
            mcp: {{ command: {everything} }}
"#
    );
    let node = Node::start(&config);
    let paths = ["root/tools/first", "root/tools/middle", "root/tools/last"];
    let before = node.wait_tree("three servers", START, |t| running(t, &paths));
    let pid = |t: &Value, p: &str| find(t, p)["pid"].as_u64().unwrap();
    let middle = find(&before, "root/tools/middle");
    kill_in_sandbox(
        &node.data,
        middle["placement"].as_str().unwrap(),
        pid(&before, "root/tools/middle") as u32,
    );
    let after = node.wait_tree("middle and last restarted", START, |t| {
        running(t, &paths)
            && find(t, "root/tools/middle")["restarts"] == 1
            && find(t, "root/tools/last")["restarts"] == 1
    });
    // The one started before the middle is untouched; the middle and the rest are new.
    assert_eq!(find(&after, "root/tools/first")["restarts"], 0);
    assert_eq!(
        pid(&after, "root/tools/first"),
        pid(&before, "root/tools/first")
    );
    assert_ne!(
        pid(&after, "root/tools/middle"),
        pid(&before, "root/tools/middle")
    );
    assert_ne!(
        pid(&after, "root/tools/last"),
        pid(&before, "root/tools/last")
    );
    assert_eq!(find(&after, "root/tools")["restarts"], 0);
    let names = names(&node);
    for ns in ["first", "middle", "last"] {
        assert!(names.contains(&format!("{ns}.echo")), "{names:?}");
    }
}

#[test]
fn when_a_sandbox_dies_its_mcp_servers_fail_are_restarted_elsewhere_and_the_pool_refills() {
    let everything = everything_command();
    let config = format!(
        r#"
version: v1
sandbox:
  warm_pool: {{ min: 1, max: 3 }}
supervisor:
  strategy: one_for_one
  intensity: 4
  children:
    - id: a
      mcp: {{ command: {everything} }}
    - id: b
      mcp: {{ command: {everything} }}
"#
    );
    let node = Node::start(&config);
    let before = node.wait_tree("two servers", START, |t| running(t, &["root/a", "root/b"]));
    let sandbox = find(&before, "root/a")["placement"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        find(&before, "root/b")["placement"],
        sandbox.as_str(),
        "one tenant, one sandbox"
    );
    let sandboxes = |node: &Node| node.json_lines(&["sandboxes", "ls", "-o", "json"]);
    let listed = sandboxes(&node);
    let hosting = listed
        .iter()
        .find(|s| s["id"] == sandbox.as_str())
        .expect("listed");
    assert_eq!(
        hosting["actors"].as_array().map(Vec::len),
        Some(2),
        "{hosting}"
    );

    // Kill gVisor's sandbox process: everything in it is gone at once.
    let out = std::process::Command::new("runsc")
        .arg("--root")
        .arg(node.data.join("sandboxes/runsc"))
        .args(["state", &sandbox])
        .output()
        .unwrap();
    let state: Value = serde_json::from_slice(&out.stdout).unwrap();
    unsafe { libc::kill(state["pid"].as_i64().unwrap() as i32, libc::SIGKILL) };

    let after = node.wait_tree("both restarted in another sandbox", START, |t| {
        running(t, &["root/a", "root/b"])
            && find(t, "root/a")["restarts"] == 1
            && find(t, "root/b")["restarts"] == 1
    });
    let moved = find(&after, "root/a")["placement"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(moved, sandbox);
    assert_eq!(find(&after, "root/b")["placement"], moved.as_str());
    let log_text = node.log();
    assert!(log_text.contains("sandbox lost"), "{log_text}");
    // The dead sandbox is listed only as ended (and how), and the pool keeps a warm one again.
    let deadline = Instant::now() + START;
    loop {
        let listed = sandboxes(&node);
        let dead: Vec<_> = listed
            .iter()
            .filter(|s| s["id"] == sandbox.as_str())
            .collect();
        if dead.len() == 1
            && dead[0]["state"] == "ended"
            && dead[0]["ended"].as_str().is_some_and(|how| !how.is_empty())
            && listed.iter().any(|s| s["state"] == "warm")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{listed:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, r, err) = call(&node, "b.echo", r#"{"message":"still here"}"#);
    assert_eq!(code, 0, "{err}");
    assert_eq!(text(&r), "Echo: still here");
}

#[test]
fn a_streamable_http_server_is_reached_at_its_url_and_reconnected_after_it_restarts() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let everything = everything_command().replace(", stdio]", ", streamableHttp]");
    let config = format!(
        r#"
version: v1
supervisor:
  strategy: one_for_one
  intensity: 5
  period_secs: 30
  children:
    - id: web
      process: {{ command: {everything}, env: {{ PORT: "{port}" }} }}
    - id: remote
      mcp: {{ url: "http://127.0.0.1:{port}/mcp", timeout_ms: 10000 }}
"#
    );
    let node = Node::start(&config);
    node.wait_tree("the remote server", START, |t| {
        find(t, "root/remote")["status"] == "running"
    });
    let remote = tools(&node)
        .into_iter()
        .find(|t| t["name"] == "remote.get-sum")
        .expect("remote.get-sum is listed");
    assert_eq!(remote["server"], "root/remote");
    let (code, r, err) = call(&node, "remote.get-sum", r#"{"a":1,"b":2}"#);
    assert_eq!(code, 0, "{err}");
    assert!(text(&r).contains('3'), "{r}");

    // The server restarts (a new process, no sessions): the session broke, so the mcp actor
    // fails, is restarted, connects again, and calls work again.
    let web = cadre_tests::pid_of(&node.tree(), "root/web");
    unsafe { libc::kill(web as i32, libc::SIGKILL) };
    let deadline = Instant::now() + START;
    loop {
        let (code, r, _) = call(&node, "remote.echo", r#"{"message":"back"}"#);
        if code == 0 {
            assert_eq!(text(&r), "Echo: back");
            break;
        }
        assert!(Instant::now() < deadline, "never back:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let tree = node.tree();
    assert!(
        find(&tree, "root/remote")["restarts"].as_u64().unwrap() >= 1,
        "{tree:#}"
    );
    assert_eq!(find(&tree, "root/remote")["kind"], "mcp");
}

/// A server on the official Python SDK whose tool opens a TCP connection to a port on
/// 127.0.0.1 and says whether it could.
const NET_SERVER: &str = r#"
import socket
from mcp.server.mcpserver import MCPServer
server = MCPServer("net")
@server.tool()
def connect(port: int) -> str:
    "Connects to 127.0.0.1:PORT."
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        return "connected"
    except OSError as e:
        return "refused: " + str(e)
server.run()
"#;

#[test]
fn an_mcp_server_reaches_the_network_only_when_its_egress_is_opted_in() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let python = cadre_tests::mcp_dir().join("time/bin/python3");
    let server = serde_json::to_string(NET_SERVER).unwrap();
    let config = format!(
        r#"
version: v1
sandbox:
  warm_pool: {{ min: 1, max: 3 }}
supervisor:
  children:
    - id: open
      mcp: {{ command: ["{python}", -c, {server}], egress: true }}
    - id: closed
      mcp: {{ command: ["{python}", -c, {server}] }}
"#,
        python = python.display(),
    );
    let node = Node::start(&config);
    let tree = node.wait_tree("both servers", START, |t| {
        running(t, &["root/open", "root/closed"])
    });
    // The egress server has a sandbox of its own, not the warm one the other took.
    assert_ne!(
        find(&tree, "root/open")["placement"],
        find(&tree, "root/closed")["placement"]
    );
    let args = format!(r#"{{"port":{port}}}"#);
    let (code, r, err) = call(&node, "open.connect", &args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(text(&r), "connected");
    let (code, r, err) = call(&node, "closed.connect", &args);
    assert_eq!(code, 0, "{err}");
    assert!(text(&r).starts_with("refused"), "{r}");
    let placed = node.cli(&["sandboxes", "ls", "-o", "json"]);
    assert!(
        String::from_utf8_lossy(&placed.stdout).contains("root.open"),
        "{placed:?}"
    );
    drop(listener);
}
