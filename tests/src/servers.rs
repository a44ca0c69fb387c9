//! The scripted servers of the agent tests: an OpenAI-compatible model server that counts
//! every request, and an MCP tool server that records each call's idempotency key.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{TempDir, free_port, mcp_dir};

/// The scripted model server (`tests/fixtures/model_server.py`).
pub struct ModelServer {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    _dir: TempDir,
}

impl ModelServer {
    /// Serves the replies of `script` (a JSON array) in order, one per request.
    pub fn start(script: Value) -> Self {
        Self::start_with(script, &[])
    }

    /// Over TLS with this certificate and key.
    pub fn start_tls(script: Value, cert: &Path, key: &Path) -> Self {
        Self::start_with(script, &[cert, key])
    }

    fn start_with(script: Value, tls: &[&Path]) -> Self {
        let dir = TempDir::new("model");
        let path = dir.path().join("script.json");
        std::fs::write(&path, script.to_string()).unwrap();
        let mut child = Command::new("python3")
            .arg(fixture("model_server.py"))
            .arg(&path)
            .args(tls)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the model server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("model server said {line:?}"));
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// The config's `models:` section with this server as model `scripted`.
    pub fn models_yaml(&self) -> String {
        format!(
            "models:\n  - id: scripted\n    openai: {{ base_url: \"http://127.0.0.1:{}/v1\", \
             model: test-model }}\n",
            self.port
        )
    }

    /// Per scripted reply: `{"count", "messages", "tools"}` of the request that got it.
    pub fn requests(&self) -> Vec<Value> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "GET /requests HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str::<Vec<Value>>(body).expect("requests JSON")
    }

    /// How many times each scripted reply was requested.
    pub fn counts(&self) -> Vec<u64> {
        self.requests()
            .iter()
            .map(|r| r["count"].as_u64().unwrap())
            .collect()
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The record tool server (`tests/fixtures/record_server.py`).
pub struct RecordServer {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    effects: PathBuf,
    _dir: TempDir,
}

impl RecordServer {
    /// A record server whose calls take `delay_ms`.
    pub fn start(delay_ms: u64) -> Self {
        Self::start_with(delay_ms, &[])
    }

    /// Over TLS with this certificate and key.
    pub fn start_tls(cert: &Path, key: &Path) -> Self {
        Self::start_with(0, &[cert, key])
    }

    fn start_with(delay_ms: u64, tls: &[&Path]) -> Self {
        let dir = TempDir::new("record");
        let effects = dir.path().join("effects.jsonl");
        let port = free_port();
        let child = Command::new(mcp_dir().join("time/bin/python3"))
            .arg(fixture("record_server.py"))
            .arg(port.to_string())
            .arg(&effects)
            .arg(delay_ms.to_string())
            .args(tls)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the MCP SDK's python runs the record server");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the record server did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            port,
            effects,
            _dir: dir,
        }
    }

    /// This server as the root supervisor's child `rec` (an entry of its `children:`).
    pub fn child_yaml(&self) -> String {
        format!(
            "    - id: rec\n      mcp: {{ url: \"http://127.0.0.1:{}/mcp\", timeout_ms: 20000 }}\n",
            self.port
        )
    }

    /// Every call the tool saw: `{"key", "note", "applied"}`.
    pub fn effects(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.effects)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for RecordServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `node` has the record server's tool (`rec.record`).
pub fn wait_for_record_tool(node: &crate::Node) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tools = node.json_lines(&["tools", "ls", "-o", "json"]);
        if tools.iter().any(|t| t["name"] == "rec.record") {
            return;
        }
        assert!(Instant::now() < deadline, "rec.record never registered");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A tool-call reply of the script.
pub fn record_call(note: &str) -> Value {
    json!({"tool_calls": [{"name": "rec__record", "arguments": {"note": note}}]})
}

/// Three increasing (event type, n) points of a 4-step exec, from a seed printed on failure.
pub fn kill_points() -> Vec<(&'static str, usize)> {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Events in exec order: ModelCalled 1, ToolCalled 1, ModelCalled 2, …
    let mut points: Vec<usize> = Vec::new();
    while points.len() < 3 {
        let p = (next() % 8) as usize;
        if !points.contains(&p) {
            points.push(p);
        }
    }
    points.sort();
    points
        .into_iter()
        .map(|p| {
            let kind = if p % 2 == 0 {
                "model_called"
            } else {
                "tool_called"
            };
            (kind, p / 2 + 1)
        })
        .collect()
}

/// A file of `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}
