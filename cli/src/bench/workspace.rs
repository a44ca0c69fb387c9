//! `cadre bench workspace`: what an agent does in its workspace (a virtualenv with a package
//! installed from a local wheel, a `git` repository of a few hundred files, a C compile, a walk
//! over a library tree), timed inside a gVisor sandbox and, as the baseline, on the host.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cadre_actors::sandbox::SandboxSpec;
use cadre_proto::v1::worker_client::WorkerClient;
use cadre_proto::v1::{ProcessStart, RunInput, run_input, run_output};
use clap::Args;
use serde_json::{Map, Value, json};

use super::ms;
use crate::{Failure, Output};

#[derive(Args)]
pub struct WorkspaceBenchArgs {
    /// Rounds, each in a new sandbox on a new workspace; the figures are medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Files in the git repository.
    #[arg(long, default_value_t = 300)]
    files: usize,
    /// Where the scratch sandboxes keep their state [default: the node's default data dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

/// The workload, one shell command line per phase, run in the workspace. Each phase needs the
/// ones before it.
const PHASES: &[(&str, &str)] = &[
    (
        "ls_stat",
        "ls /usr /tmp \"$PWD\" >/dev/null && stat /usr/bin/env >/dev/null && ls -la src | wc -l",
    ),
    ("venv", "python3 -m venv venv"),
    (
        "pip_install",
        "venv/bin/pip install -q --no-index --no-deps --disable-pip-version-check \
         /usr/share/python-wheels/setuptools-*.whl && venv/bin/python -c 'import setuptools'",
    ),
    (
        "git",
        "cd src && git init -q && git add -A && \
         git -c user.name=bench -c user.email=bench@localhost commit -qm init && \
         echo change >> file-7.txt && git status --porcelain | grep -q file-7 && \
         git diff --stat >/dev/null",
    ),
    ("compile", "gcc -O1 -o prog prog.c && ./prog >/dev/null"),
    (
        "find",
        "find /usr/lib/python3.11 -name '*.py' | wc -l && \
         python3 -c 'import json, email.parser, http.client, asyncio, sqlite3'",
    ),
];

/// The `PATH` both sides run with: the sandbox's.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

pub async fn run(args: WorkspaceBenchArgs) -> Result<(), Failure> {
    if args.rounds == 0 || args.files < 10 {
        return Err(Failure::Usage(
            "--rounds must be at least 1 and --files at least 10".into(),
        ));
    }
    let scratch = super::scratch_dir(args.data_dir.as_deref(), "workspace");
    let result = rounds(&args, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    match args.output {
        Output::Json | Output::Yaml => crate::emit(args.output, &report),
        Output::Text => {
            println!(
                "{} ({} rounds, medians); cold sandbox start {} ms",
                report["runsc"].as_str().unwrap_or("runsc"),
                args.rounds,
                report["cold_start_ms"]
            );
            println!("{:<12} {:>12} {:>12}", "phase", "sandbox ms", "host ms");
            for (phase, _) in PHASES {
                let row = &report["phases"][phase];
                let sandbox = match row["sandbox_error"].as_str() {
                    Some(_) => "failed".to_string(),
                    None => format!("{:.1}", row["sandbox_ms"].as_f64().unwrap_or_default()),
                };
                println!(
                    "{phase:<12} {sandbox:>12} {:>12.1}",
                    row["host_ms"].as_f64().unwrap_or_default()
                );
                if let Some(error) = row["sandbox_error"].as_str() {
                    println!("  in the sandbox: {error}");
                }
            }
        }
    }
    Ok(())
}

async fn rounds(args: &WorkspaceBenchArgs, dir: &Path) -> anyhow::Result<Value> {
    let worker_bin = std::env::current_exe().context("find the cadre binary")?;
    let provider = Arc::new(cadre_sandbox::GvisorProvider::new(
        dir.join("state"),
        worker_bin,
    )?);
    let mut sandbox_ms: Vec<Vec<Duration>> = vec![Vec::new(); PHASES.len()];
    let mut host_ms = sandbox_ms.clone();
    let mut errors: Vec<Option<String>> = vec![None; PHASES.len()];
    let mut cold = Vec::new();
    for round in 0..args.rounds {
        eprintln!("bench workspace: round {}", round + 1);
        let workspace = dir.join(format!("sandbox-{round}"));
        prepare(&workspace, args.files)?;
        let (sandbox, took) = super::cold_start(
            provider.as_ref(),
            SandboxSpec {
                id: format!("bench-workspace-{}-{round}", std::process::id()),
                tenant: "bench".into(),
                workspace: workspace.clone(),
                egress: false,
                memory_bytes: Some(2 << 30),
                cpus: None,
                pids: Some(512),
                workspace_quota: None,
            },
        )
        .await?;
        cold.push(took);
        // As in `bench placement`: a new sandbox calibrates its clock for about a second.
        tokio::time::sleep(super::SANDBOX_WARMUP).await;
        for (i, (_, line)) in PHASES.iter().enumerate() {
            if errors[i].is_some() {
                continue;
            }
            match in_sandbox(sandbox.worker(), line).await? {
                Ok(took) => sandbox_ms[i].push(took),
                Err(why) => errors[i] = Some(why),
            }
        }
        sandbox.kill().await;

        let host = dir.join(format!("host-{round}"));
        prepare(&host, args.files)?;
        for (i, (phase, line)) in PHASES.iter().enumerate() {
            let took = on_host(&host, line)
                .await?
                .map_err(|why| anyhow::anyhow!("phase {phase} failed on the host: {why}"))?;
            host_ms[i].push(took);
        }
    }
    cold.sort();
    let mut phases = Map::new();
    for (i, (phase, _)) in PHASES.iter().enumerate() {
        let mut row = Map::new();
        match &errors[i] {
            Some(why) => {
                row.insert("sandbox_error".into(), json!(why));
            }
            None => {
                row.insert("sandbox_ms".into(), json!(median(&mut sandbox_ms[i])));
            }
        }
        row.insert("host_ms".into(), json!(median(&mut host_ms[i])));
        phases.insert(phase.to_string(), Value::Object(row));
    }
    Ok(json!({
        "runsc": runsc_version(),
        "rounds": args.rounds,
        "files": args.files,
        "cold_start_ms": median(&mut cold),
        "phases": phases,
    }))
}

/// A workspace holding `files` small text files under `src/` and a C program of a few hundred
/// functions.
fn prepare(dir: &Path, files: usize) -> anyhow::Result<()> {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).with_context(|| format!("create {}", src.display()))?;
    for i in 0..files {
        let text = format!("file {i}\n").repeat(20);
        std::fs::write(src.join(format!("file-{i}.txt")), text)?;
    }
    let mut program = String::from("#include <stdio.h>\n");
    for i in 0..300 {
        let _ = writeln!(
            program,
            "static long f{i}(long x) {{ for (int k = 0; k < {i} % 7 + 1; k++) x = x * 31 + {i}; return x; }}"
        );
    }
    program.push_str("int main(void) { long x = 1;\n");
    for i in 0..300 {
        let _ = writeln!(program, "  x = f{i}(x);");
    }
    program.push_str("  printf(\"%ld\\n\", x); return 0; }\n");
    std::fs::write(dir.join("prog.c"), program)?;
    Ok(())
}

/// Runs `sh -c LINE` in the sandbox's workspace: how long it took, or why it failed.
async fn in_sandbox(
    mut worker: WorkerClient<tonic::transport::Channel>,
    line: &str,
) -> anyhow::Result<Result<Duration, String>> {
    let start = RunInput {
        input: Some(run_input::Input::Start(ProcessStart {
            argv: vec!["/bin/sh".into(), "-c".into(), line.into()],
            env: [("PATH".to_string(), PATH.to_string())].into(),
            ..Default::default()
        })),
    };
    let t = Instant::now();
    let mut outputs = worker
        .run(tokio_stream::iter(vec![start]))
        .await?
        .into_inner();
    let mut stderr = Vec::new();
    while let Some(out) = outputs.message().await? {
        match out.output {
            Some(run_output::Output::Stderr(bytes)) => stderr.extend_from_slice(&bytes),
            Some(run_output::Output::Exit(exit)) => {
                let took = t.elapsed();
                return Ok(if exit.code == 0 {
                    Ok(took)
                } else {
                    Err(failure(exit.code, &stderr))
                });
            }
            _ => {}
        }
    }
    anyhow::bail!("the worker ended the process stream without an exit")
}

/// Runs `sh -c LINE` on the host in `dir`, with the sandbox's `PATH`.
async fn on_host(dir: &Path, line: &str) -> anyhow::Result<Result<Duration, String>> {
    let t = Instant::now();
    let out = tokio::process::Command::new("/bin/sh")
        .args(["-c", line])
        .current_dir(dir)
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", dir)
        .output()
        .await?;
    let took = t.elapsed();
    Ok(if out.status.success() {
        Ok(took)
    } else {
        Err(failure(out.status.code().unwrap_or(-1), &out.stderr))
    })
}

fn failure(code: i32, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let last = text.lines().last().unwrap_or("").trim();
    format!("exit {code}: {last}")
}

/// The median in ms (the upper one of an even count).
fn median(took: &mut [Duration]) -> f64 {
    took.sort();
    ms(took[took.len() / 2])
}

/// `runsc --version`'s first line, from the `runsc` on `PATH`.
fn runsc_version() -> String {
    std::process::Command::new("runsc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "runsc".into())
}
