//! An OTLP/gRPC trace receiver (`tests/fixtures/otlp_receiver.py`, on opentelemetry-proto and
//! grpcio) that keeps every span it is sent.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::servers::fixture;
use crate::{TempDir, mcp_dir};

/// A running receiver, killed (by pid) when dropped.
pub struct OtlpReceiver {
    child: Child,
    /// `http://127.0.0.1:PORT`, for `telemetry.otlp_endpoint`.
    pub endpoint: String,
    spans: PathBuf,
    _dir: TempDir,
}

impl OtlpReceiver {
    /// Starts the receiver on a free port.
    pub fn start() -> Self {
        let dir = TempDir::new("otlp");
        let spans = dir.path().join("spans.jsonl");
        let mut child = Command::new(mcp_dir().join("grpc/bin/python3"))
            .arg(fixture("otlp_receiver.py"))
            .arg(&spans)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the gRPC venv's python runs the OTLP receiver (scripts/setup.sh)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the OTLP receiver said {line:?}"));
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            spans,
            _dir: dir,
        }
    }

    /// Every span received so far: `{"trace_id", "span_id", "parent_span_id", "name",
    /// "attributes", "events"}`.
    pub fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits (up to 30 s) until the spans received satisfy `done`; returns them.
    pub fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} among the spans received:\n{}",
                spans
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
