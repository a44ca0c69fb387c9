//! A real Prometheus (Debian's `prometheus`) on loopback that scrapes the given targets every
//! second, and its HTTP query API.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{TempDir, free_port, http};

/// A running `prometheus`, killed (by pid) when dropped.
pub struct Prometheus {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`HOST:PORT`, path `/metrics`) every second and
    /// waits until it is ready.
    pub fn start(targets: &[&str]) -> Self {
        let dir = TempDir::new("prometheus");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n  - job_name: cadre\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is not installed (scripts/setup.sh installs it)");
        let prometheus = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http("GET", &format!("{}/-/ready", prometheus.url), "", None)
            .is_none_or(|(code, _)| code != 200)
        {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// The value of an instant query whose result is one sample (summed if several);
    /// `None` while it has none.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url),
            [("query", format!("sum({promql})"))],
        )
        .ok()?;
        let (_, body) = http("GET", url.as_str(), "", None)?;
        let answer: Value = serde_json::from_str(&body).ok()?;
        let result = answer["data"]["result"].as_array()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits (up to `limit`) until `promql` is `want`; the last value seen otherwise.
    pub fn wait_for(&self, promql: &str, want: f64, limit: Duration) -> Result<(), Option<f64>> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.query(promql);
            if got == Some(want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(got);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
