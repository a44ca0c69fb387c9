//! The config schema: a valid tree parses into the right specs, and each malformed file is
//! rejected with the line, column and message that point at the mistake.

use std::time::Duration;

use cadre_actors::config::{ActorConfig, Config};
use cadre_actors::mcp::McpServer;
use cadre_actors::{AutoShutdown, Restart, Shutdown, Strategy};

fn reject(text: &str) -> String {
    match Config::parse("cadre.yaml", text) {
        Ok(_) => panic!("accepted a bad config:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn telemetry_console_and_price_sections() {
    let config = Config::parse(
        "cadre.yaml",
        "version: v1\ntelemetry: { metrics_listen: 127.0.0.1:9464, otlp_endpoint: \
         http://127.0.0.1:4317 }\nconsole: { listen: localhost:7480 }\nmodels:\n  - id: m\n    \
         openai: { base_url: http://x/v1, model: q }\n    \
         price: { input_per_million: 3, output_per_million: 15.5 }\n",
    )
    .unwrap();
    assert_eq!(
        config.telemetry.metrics_listen.as_deref(),
        Some("127.0.0.1:9464")
    );
    assert_eq!(
        config.telemetry.otlp_endpoint.as_deref(),
        Some("http://127.0.0.1:4317")
    );
    assert_eq!(config.console.unwrap().listen, "localhost:7480");
    let price = config.models[0].price.unwrap();
    assert_eq!(price.cost(1_000_000, 2_000_000), 3.0 + 31.0);
    assert_eq!(
        Config::parse("cadre.yaml", "version: v1\n")
            .unwrap()
            .console,
        None
    );
    assert_eq!(
        reject("version: v1\ntelemetry: { metrics_listen: nope }\n"),
        "cadre.yaml:2:30: telemetry.metrics_listen: `nope` is not an address like \
         127.0.0.1:7400 (no port)"
    );
    assert!(
        reject("version: v1\ntelemetry: { otlp_endpoint: grpc://x:4317 }\n").starts_with(
            "cadre.yaml:2:29: telemetry.otlp_endpoint: `grpc://x:4317` is not an http://"
        )
    );
    assert!(
        reject("version: v1\nconsole: { listen: \"1.2.3.4:99999\" }\n")
            .starts_with("cadre.yaml:2:20: console.listen: ")
    );
    assert_eq!(
        reject(
            "version: v1\nmodels:\n  - id: m\n    openai: { base_url: http://x/v1, model: q }\n    \
             price: { input_per_million: -1, output_per_million: 2 }\n"
        ),
        "cadre.yaml:5:33: models[0].price.input_per_million: model `m`: price.input_per_million \
         must be a number ≥ 0, got -1"
    );
}

#[test]
fn kubernetes_sandbox_section() {
    let config = Config::parse(
        "cadre.yaml",
        "version: v1\nsandbox:\n  provider: kubernetes\n  kubernetes:\n    image: cadre:1\n    \
         tls: { cert_file: c.crt, key_file: c.key, ca_file: ca.crt }\n",
    )
    .unwrap();
    assert_eq!(
        config.sandbox.provider,
        cadre_actors::config::SandboxKind::Kubernetes
    );
    let kubernetes = config.sandbox.kubernetes.unwrap();
    assert_eq!(kubernetes.image, "cadre:1");
    assert_eq!(kubernetes.runtime_class.as_deref(), Some("gvisor"));
    assert_eq!(kubernetes.worker_secret, "cadre-worker-tls");
    assert_eq!(kubernetes.namespace, None);
    assert_eq!(kubernetes.start_timeout, Duration::from_secs(120));
    let default_runtime = Config::parse(
        "cadre.yaml",
        "version: v1\nsandbox:\n  provider: kubernetes\n  kubernetes:\n    image: i\n    \
         runtime_class: \"\"\n    tls: { cert_file: c, key_file: k, ca_file: a }\n",
    )
    .unwrap();
    assert_eq!(
        default_runtime.sandbox.kubernetes.unwrap().runtime_class,
        None
    );
    assert_eq!(
        reject("version: v1\nsandbox:\n  provider: kubernetes\n"),
        "cadre.yaml:3:13: sandbox.provider `kubernetes` needs a \
         `sandbox.kubernetes` section (at least `image` and `tls`)"
    );
    assert_eq!(
        reject(
            "version: v1\nsandbox:\n  kubernetes:\n    image: i\n    \
             tls: { cert_file: c, key_file: k, ca_file: a }\n"
        ),
        "cadre.yaml:4:10: sandbox.kubernetes is for `provider: kubernetes`"
    );
    assert_eq!(
        reject(
            "version: v1\nsandbox:\n  provider: kubernetes\n  kubernetes:\n    image: i\n    \
             namespace: Cadre_NS\n    tls: { cert_file: c, key_file: k, ca_file: a }\n"
        ),
        "cadre.yaml:6:16: sandbox.kubernetes.namespace `Cadre_NS` \
         is not a Kubernetes name (1 to 63 lowercase letters, digits and `-`)"
    );
    assert_eq!(
        reject(
            "version: v1\nsandbox:\n  provider: kubernetes\n  kubernetes:\n    image: i\n    \
             start_timeout_ms: 10\n    tls: { cert_file: c, key_file: k, ca_file: a }\n"
        ),
        "cadre.yaml:6:23: sandbox.kubernetes.start_timeout_ms must be ≥ 1000, got 10"
    );
    assert!(
        reject("version: v1\nsandbox:\n  provider: kubernetes\n  kubernetes:\n    image: i\n")
            .contains("tls"),
        "tls is required"
    );
}

#[test]
fn a_full_tree_parses_with_otp_defaults() {
    let config = Config::parse(
        "cadre.yaml",
        r#"
version: v1
node: { listen: 127.0.0.1:7500, data_dir: /tmp/cadre }
supervisor:
  strategy: one_for_one
  intensity: 3
  period_secs: 10
  children:
    - id: web
      process: { command: [python3, -m, http.server, "8000"], env: { A: "1" }, cwd: /tmp }
      shutdown: brutal_kill
    - id: tools
      supervisor:
        strategy: rest_for_one
        auto_shutdown: any_significant
        children:
          - id: a
            process: { command: [sleep, "100"] }
            restart: transient
            significant: true
            shutdown: 250
"#,
    )
    .expect("valid config");
    assert_eq!(config.node.listen.as_deref(), Some("127.0.0.1:7500"));
    let root = &config.supervisor;
    assert_eq!(root.flags.strategy, Strategy::OneForOne);
    assert_eq!(root.flags.intensity, 3);
    assert_eq!(root.flags.period, Duration::from_secs(10));
    assert_eq!(root.children.len(), 2);
    let web = &root.children[0];
    assert_eq!(web.shutdown, Shutdown::BrutalKill);
    assert_eq!(web.restart, Restart::Permanent);
    let ActorConfig::Process(p) = &web.actor else {
        panic!("web is a process")
    };
    assert_eq!(p.command, ["python3", "-m", "http.server", "8000"]);
    assert_eq!(p.env, [("A".to_string(), "1".to_string())]);
    let tools = &root.children[1];
    assert_eq!(
        tools.shutdown,
        Shutdown::Infinity,
        "supervisors default to infinity"
    );
    let ActorConfig::Supervisor(s) = &tools.actor else {
        panic!("tools is a supervisor")
    };
    assert_eq!(s.flags.strategy, Strategy::RestForOne);
    assert_eq!(s.flags.intensity, 1, "OTP default intensity");
    assert_eq!(s.flags.period, Duration::from_secs(5), "OTP default period");
    assert_eq!(s.flags.auto_shutdown, AutoShutdown::AnySignificant);
    let a = &s.children[0];
    assert_eq!(a.restart, Restart::Transient);
    assert!(a.significant);
    assert_eq!(a.shutdown, Shutdown::Timeout(Duration::from_millis(250)));
    assert_eq!(
        root.child_specs(&cadre_actors::Services::default()).len(),
        2
    );
}

#[test]
fn an_empty_file_is_refused_like_one_without_a_version() {
    // An empty file is a mistake (issue 21): a node on defaults needs no --config at all.
    for text in ["", "\n  \n"] {
        let e = Config::parse("cadre.yaml", text).unwrap_err();
        assert_eq!((e.line, e.column), (1, 1), "{e}");
        assert!(
            e.to_string()
                .starts_with("cadre.yaml:1:1: the file is empty"),
            "{e}"
        );
    }
    let minimal = Config::parse("cadre.yaml", "version: v1\n").expect("minimal config");
    assert!(minimal.supervisor.children.is_empty());
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_first_key() {
    let config = Config::parse("cadre.yaml", "\u{feff}version: v1\n").expect("BOM");
    assert!(config.supervisor.children.is_empty());
}

#[test]
fn a_missing_file_is_not_found_and_a_bad_listen_address_is_named() {
    let e = Config::load(std::path::Path::new("/nonexistent/cadre.yaml")).unwrap_err();
    assert_eq!(e.to_string(), "/nonexistent/cadre.yaml: not found");
    let e = Config::parse(
        "cadre.yaml",
        "version: v1\nnode:\n  listen: not-an-address\n",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "cadre.yaml:3:11: node.listen: `not-an-address` is not an address like 127.0.0.1:7400 (no port)"
    );
    for ok in [
        "localhost:7611",
        "127.0.0.1:0",
        "[::1]:7400",
        "node-1.cadre.svc:7400",
    ] {
        let text = format!("version: v1\nnode:\n  listen: \"{ok}\"\n");
        assert!(Config::parse("cadre.yaml", &text).is_ok(), "{ok}");
    }
}

#[test]
fn unknown_key() {
    assert_eq!(
        reject("version: v1\nsupervisor:\n  strategy: one_for_one\n  intensty: 3\n"),
        "cadre.yaml:4:3: supervisor: unknown field `intensty`, expected one of `strategy`, `intensity`, `period_secs`, `auto_shutdown`, `max_children`, `backoff`, or `children`"
    );
}

#[test]
fn bad_strategy() {
    assert_eq!(
        reject("version: v1\nsupervisor:\n  strategy: one_for_none\n"),
        "cadre.yaml:3:13: supervisor.strategy: unknown strategy `one_for_none` (expected one_for_one, one_for_all or rest_for_one)"
    );
}

#[test]
fn duplicate_child_id() {
    assert_eq!(
        reject(
            "version: v1\nsupervisor:\n  children:\n    - id: a\n      process: { command: [true] }\n    - id: a\n      process: { command: [true] }\n"
        ),
        "cadre.yaml:6:11: supervisor.children[1].id: duplicate child id `a` (first defined at line 4)"
    );
}

#[test]
fn negative_intensity() {
    assert_eq!(
        reject("version: v1\nsupervisor:\n  intensity: -1\n"),
        "cadre.yaml:3:14: supervisor.intensity: intensity must be a whole number ≥ 0, got -1"
    );
}

#[test]
fn zero_period() {
    assert_eq!(
        reject("version: v1\nsupervisor:\n  period_secs: 0\n"),
        "cadre.yaml:3:16: supervisor.period_secs: period_secs must be ≥ 1, got 0"
    );
}

#[test]
fn bad_restart_type() {
    assert_eq!(
        reject(
            "version: v1\nsupervisor:\n  children:\n    - id: a\n      restart: always\n      process: { command: [true] }\n"
        ),
        "cadre.yaml:5:16: supervisor.children[0].restart: unknown restart `always` (expected permanent, transient or temporary)"
    );
}

#[test]
fn bad_shutdown() {
    assert_eq!(
        reject(
            "version: v1\nsupervisor:\n  children:\n    - id: a\n      shutdown: soon\n      process: { command: [true] }\n"
        ),
        "cadre.yaml:5:17: supervisor.children[0].shutdown: shutdown must be brutal_kill, infinity or milliseconds ≥ 0, got `soon`"
    );
}

#[test]
fn child_without_kind() {
    assert_eq!(
        reject("version: v1\nsupervisor:\n  children:\n    - id: a\n      restart: transient\n"),
        "cadre.yaml:4:9: child `a` needs an actor kind: `process`, `mcp`, `skill`, `agent` or `supervisor`"
    );
}

#[test]
fn empty_command() {
    assert_eq!(
        reject(
            "version: v1\nsupervisor:\n  children:\n    - id: a\n      process: { command: [] }\n"
        ),
        "cadre.yaml:5:27: supervisor.children[0].process.command: child `a`: process.command must name a program"
    );
}

#[test]
fn significant_permanent_child() {
    assert_eq!(
        reject(
            "version: v1\nsupervisor:\n  auto_shutdown: any_significant\n  children:\n    - id: a\n      significant: true\n      process: { command: [true] }\n"
        ),
        "cadre.yaml:6:20: supervisor.children[0].significant: child `a`: a significant child must be transient or temporary"
    );
}

#[test]
fn significant_child_without_auto_shutdown() {
    assert_eq!(
        reject(
            "version: v1\nsupervisor:\n  children:\n    - id: a\n      restart: transient\n      significant: true\n      process: { command: [true] }\n"
        ),
        "cadre.yaml:6:20: supervisor.children[0].significant: child `a`: significant children need the supervisor's auto_shutdown to be any_significant or all_significant"
    );
}

#[test]
fn missing_or_wrong_version() {
    assert_eq!(
        reject("supervisor: {}\n"),
        "cadre.yaml:1:1: missing `version: v1`"
    );
    assert_eq!(
        reject("version: v2\n"),
        "cadre.yaml:1:10: version: unsupported version `v2` (expected v1)"
    );
}

#[test]
fn invalid_yaml() {
    let e = reject("version: v1\nsupervisor:\n  children: [\n");
    assert!(e.starts_with("cadre.yaml:4:1: invalid YAML"), "{e}");
}

#[test]
fn nested_error_points_into_the_nested_supervisor() {
    assert_eq!(
        reject(
            "version: v1\nsupervisor:\n  children:\n    - id: tools\n      supervisor:\n        strategy: rest_for_one\n        children:\n          - id: bad/id\n            process: { command: [true] }\n"
        ),
        "cadre.yaml:8:17: supervisor.children[0].supervisor.children[0].id: child id `bad/id` must be non-empty and use only letters, digits, `-`, `_` and `.`"
    );
}

#[test]
fn wrong_value_type() {
    let e = reject("version: v1\nsupervisor:\n  intensity: lots\n");
    assert_eq!(
        e,
        "cadre.yaml:3:14: supervisor.intensity: expected a whole number (digits only)"
    );
    let e = reject("version: v1\nsupervisor:\n  intensity: 99999999999999999999999\n");
    assert_eq!(
        e,
        "cadre.yaml:3:14: supervisor.intensity: number too large for this field"
    );
    let e = reject("version: v1\nsupervisor:\n  children: foo\n");
    assert_eq!(
        e,
        "cadre.yaml:3:13: supervisor.children: invalid type: string \"foo\", expected a sequence"
    );
    let e = reject("version: v1\n---\nversion: v1\n");
    assert_eq!(
        e,
        "cadre.yaml:2:1: a second YAML document (`---`): a config is one document"
    );
    assert!(Config::parse("cadre.yaml", "---\n# c\nversion: v1\n").is_ok());
}

#[test]
fn duplicate_key() {
    assert_eq!(
        reject("version: v1\nversion: v1\n"),
        "cadre.yaml:2:1: duplicate key `version`"
    );
}

#[test]
fn sandbox_section() {
    let config = Config::parse(
        "cadre.yaml",
        "version: v1\nsandbox:\n  provider: gvisor\n  warm_pool: { min: 2, max: 4 }\n  memory_mib: 256\n  cpus: 1\n",
    )
    .unwrap();
    assert_eq!(
        (
            config.sandbox.min,
            config.sandbox.max,
            config.sandbox.memory_bytes
        ),
        (2, 4, Some(256 << 20))
    );
    assert!(config.sandbox.configured);
    assert!(
        !Config::parse("cadre.yaml", "version: v1\n")
            .unwrap()
            .sandbox
            .configured
    );
    let plain = Config::parse(
        "cadre.yaml",
        "version: v1\nsandbox: { provider: process, allow_unsandboxed: true }\n",
    )
    .unwrap();
    assert_eq!(
        plain.sandbox.provider,
        cadre_actors::config::SandboxKind::Process
    );
    assert_eq!(
        reject("version: v1\nsandbox:\n  provider: process\n"),
        "cadre.yaml:3:13: sandbox.provider `process` isolates nothing: untrusted code would run on the host; add `allow_unsandboxed: true` to accept that"
    );
    assert_eq!(
        reject("version: v1\nsandbox:\n  warm_pool: { min: 5, max: 2 }\n"),
        "cadre.yaml:3:21: sandbox.warm_pool.min (5) is more than max (2)"
    );
    assert_eq!(
        reject("version: v1\nsandbox:\n  provider: firecracker\n"),
        "cadre.yaml:3:13: sandbox.provider: unknown sandbox.provider `firecracker` (expected gvisor, process or kubernetes)"
    );
    assert_eq!(
        reject("version: v1\nsandbox:\n  warm_pool: { slots_per_sandbox: 0 }\n"),
        "cadre.yaml:3:35: sandbox.warm_pool.slots_per_sandbox must be ≥ 1, got 0"
    );
    let slots = Config::parse(
        "cadre.yaml",
        "version: v1\nsandbox:\n  warm_pool: { slots_per_sandbox: 16 }\n",
    )
    .unwrap();
    assert_eq!(slots.sandbox.slots_per_sandbox, 16);
    assert_eq!(
        slots.sandbox.idle_timeout,
        Duration::from_secs(60),
        "the default"
    );
    assert_eq!(
        reject("version: v1\nsandbox:\n  warm_pool: { idle_timeout_ms: 0 }\n"),
        "cadre.yaml:3:33: sandbox.warm_pool.idle_timeout_ms must be ≥ 1, got 0"
    );
    let idle = Config::parse(
        "cadre.yaml",
        "version: v1\nsandbox:\n  warm_pool: { idle_timeout_ms: 1500 }\n",
    )
    .unwrap();
    assert_eq!(idle.sandbox.idle_timeout, Duration::from_millis(1500));
}

#[test]
fn mcp_children() {
    let config = Config::parse(
        "cadre.yaml",
        "version: v1\nsupervisor:\n  children:\n    - id: time\n      restart: transient\n      \
         mcp: { command: [python3, -m, mcp_server_time], tenant: team-a, isolation: exclusive, \
         timeout_ms: 1500 }\n",
    )
    .unwrap();
    let child = &config.supervisor.children[0];
    assert_eq!(child.restart, Restart::Transient);
    let ActorConfig::Mcp(mcp) = &child.actor else {
        panic!("{child:?}")
    };
    assert_eq!(
        mcp.server,
        McpServer::Stdio {
            command: vec!["python3".into(), "-m".into(), "mcp_server_time".into()],
            env: vec![]
        }
    );
    assert_eq!(mcp.tenant, "team-a");
    assert!(mcp.exclusive);
    assert_eq!(mcp.call_timeout, Duration::from_millis(1500));
    assert_eq!(mcp.start_timeout, Duration::from_secs(60));

    let child = |mcp: &str| {
        format!("version: v1\nsupervisor:\n  children:\n    - id: m\n      mcp: {mcp}\n")
    };
    assert_eq!(
        reject(&child("{ command: [] }")),
        "cadre.yaml:5:23: supervisor.children[0].mcp.command: child `m`: mcp.command must name a program"
    );
    assert_eq!(
        reject(&child("{ command: [x], isolation: private }")),
        "cadre.yaml:5:39: supervisor.children[0].mcp.isolation: unknown mcp.isolation `private` (expected shared or exclusive)"
    );
    assert_eq!(
        reject(&child("{ command: [x], timeout_ms: 0 }")),
        "cadre.yaml:5:40: supervisor.children[0].mcp.timeout_ms: mcp.timeout_ms must be ≥ 1, got 0"
    );
    assert_eq!(
        reject(&child("{ command: [x], tenant: \"a b\" }")),
        "cadre.yaml:5:36: supervisor.children[0].mcp.tenant: child `m`: mcp.tenant must use only letters, digits, `-`, `_` and `.`"
    );
    let config = Config::parse(
        "cadre.yaml",
        &child("{ url: \"http://127.0.0.1:3001/mcp\" }"),
    )
    .unwrap();
    let ActorConfig::Mcp(mcp) = &config.supervisor.children[0].actor else {
        panic!()
    };
    assert_eq!(
        mcp.server,
        McpServer::Http {
            url: "http://127.0.0.1:3001/mcp".into(),
            ca_file: None,
        }
    );
    assert_eq!(
        reject(&child("{ timeout_ms: 5 }")),
        "cadre.yaml:5:12: child `m`: mcp needs a `command` (stdio) or a `url` (streamable HTTP)"
    );
    assert!(reject(&child("{ command: [x], url: \"http://a\" }")).contains("not both"));
    assert!(reject(&child("{ url: \"ftp://a\" }")).contains("must be an http:// or https:// URL"));
    assert!(
        reject(&child("{ url: \"http://a\", ca_file: ca.pem }"))
            .contains("ca_file is for an https:// endpoint")
    );
    assert!(
        reject(&child("{ url: \"http://a\", egress: true }"))
            .contains("mcp.egress is for a command in a sandbox, not a url")
    );
    let config = Config::parse("cadre.yaml", &child("{ command: [x], egress: true }")).unwrap();
    let ActorConfig::Mcp(mcp) = &config.supervisor.children[0].actor else {
        panic!()
    };
    assert!(mcp.egress);
    assert!(
        reject(
            "version: v1\nsupervisor:\n  children:\n    - id: m\n      process: { command: [x] }\n      mcp: { command: [y] }\n"
        )
        .contains("child `m` has both `process` and `mcp`; give exactly one")
    );
}

#[test]
fn models_and_agent_children() {
    let text = "version: v1\nmodels:\n  - id: local\n    openai: { base_url: \"http://127.0.0.1:8000/v1\", model: qwen3, api_key_env: KEY }\nsupervisor:\n  children:\n    - id: coder\n      restart: transient\n      agent: { model: local, system_prompt: hi, tools: [\"time.*\", workspace.run], max_iterations: 5, token_budget: 1000, tool_timeout_ms: 250, exec_timeout_secs: 9, execs_per_minute: 2, max_repeats: 4, compact_at_tokens: 800, require_approval: [\"time.*\"] }\n";
    let config = Config::parse("cadre.yaml", text).unwrap();
    assert_eq!(config.models[0].id, "local");
    assert_eq!(config.models[0].model, "qwen3");
    assert_eq!(config.models[0].api_key_env.as_deref(), Some("KEY"));
    let ActorConfig::Agent(agent) = &config.supervisor.children[0].actor else {
        panic!("an agent")
    };
    assert_eq!(agent.model, "local");
    assert_eq!(agent.tools, ["time.*", "workspace.run"]);
    assert_eq!(agent.max_iterations, 5);
    assert_eq!(agent.token_budget, Some(1000));
    assert_eq!(agent.tool_timeout, Duration::from_millis(250));
    assert_eq!(agent.exec_timeout, Some(Duration::from_secs(9)));
    assert_eq!(agent.execs_per_minute, Some(2));
    assert_eq!(agent.max_repeats, 4);
    assert_eq!(agent.compact_at_tokens, Some(800));
    assert_eq!(agent.require_approval, ["time.*"]);

    let child = |agent: &str| {
        format!("version: v1\nsupervisor:\n  children:\n    - id: a\n      agent: {agent}\n")
    };
    assert_eq!(
        reject(&child("{ model: gpt }")),
        "cadre.yaml:5:23: supervisor.children[0].agent.model: child `a`: unknown model `gpt` (models: none configured)"
    );
    assert_eq!(
        reject(&child("{ tools: [x] }")),
        "cadre.yaml:5:14: child `a`: an agent needs a `model` (an id of `models:`), a `remote` \
         AgentService address or a `command` (a process agent)"
    );
    assert_eq!(
        reject(&child("{ remote: \"http://h:1\", command: [x] }")),
        "cadre.yaml:5:47: supervisor.children[0].agent.command: child `a`: an agent takes one of `model`, `remote` and `command`"
    );
    assert_eq!(
        reject(&child("{ remote: \"h:1\" }")),
        "cadre.yaml:5:24: supervisor.children[0].agent.remote: child `a`: agent.remote must be an http://HOST:PORT address"
    );
    assert_eq!(
        reject(&child("{ command: [x], tools: [\"ti*me\"] }")),
        "cadre.yaml:5:38: supervisor.children[0].agent.tools[0]: child `a`: tool pattern `ti*me` must be `ns.tool`, `ns.*` or `*`"
    );
    assert_eq!(
        reject(&child("{ command: [x], max_iterations: 0 }")),
        "cadre.yaml:5:46: supervisor.children[0].agent.max_iterations: agent.max_iterations must be ≥ 1, got 0"
    );
    let https = Config::parse(
        "cadre.yaml",
        "version: v1\nmodels:\n  - id: m\n    openai: { base_url: \"https://api.example.com/v1\", model: x, ca_file: /etc/ca.pem }\n",
    )
    .unwrap();
    assert_eq!(
        https.models[0].ca_file.as_deref(),
        Some(std::path::Path::new("/etc/ca.pem"))
    );
    assert_eq!(
        reject(
            "version: v1\nmodels:\n  - id: m\n    openai: { base_url: \"ftp://x\", model: x }\n"
        ),
        "cadre.yaml:4:25: models[0].openai.base_url: model `m`: openai.base_url must be an http:// or https:// URL"
    );
}

#[test]
fn a_child_id_is_at_most_200_characters() {
    let ok = format!(
        "version: v1\nsupervisor:\n  children:\n    - id: {}\n      process: {{ command: [sleep, \"1\"] }}\n",
        "a".repeat(200)
    );
    assert!(Config::parse("cadre.yaml", &ok).is_ok());
    let long = ok.replace(&"a".repeat(200), &"a".repeat(5000));
    let e = Config::parse("cadre.yaml", &long).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cadre.yaml:4:11: supervisor.children[0].id: 5000 characters, at most 200"
    );
}

#[test]
fn api_tokens_have_names_roles_and_secrets_and_the_old_form_is_an_admin() {
    let dir = std::env::temp_dir().join(format!("cadre-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("acme.token"), "from-a-file\n").unwrap();
    std::fs::write(
        dir.join("cadre.yaml"),
        "version: v1\napi:\n  tokens:\n    - plain-secret\n    - {name: ci, token: ci-secret, role: reader}\n    - name: acme\n      token_file: acme.token\n      role: agent-user\n      conversation_prefix: acme-\n",
    )
    .unwrap();
    let config = Config::load(&dir.join("cadre.yaml")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let tokens: Vec<_> = config
        .api
        .tokens
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.secret.as_str(),
                t.role.name(),
                t.conversation_prefix.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        tokens,
        [
            ("api.tokens[0]", "plain-secret", "admin", None),
            ("ci", "ci-secret", "reader", None),
            ("acme", "from-a-file", "agent-user", Some("acme-")),
        ]
    );
    assert!(
        !format!("{:?}", config.api.tokens).contains("secret"),
        "no secret in Debug"
    );
}

#[test]
fn bad_api_tokens_are_named() {
    let tokens = |entries: &str| reject(&format!("version: v1\napi:\n  tokens:\n{entries}"));
    let e = tokens("    - {name: ci, token: s, role: root}\n");
    assert!(
        e.starts_with("cadre.yaml:4:34: ")
            && e.contains(
                "unknown role `root` (expected admin, operator, approver, reader, agent-user)"
            ),
        "{e}"
    );
    let e = tokens("    - {name: ci, token: s, role: agent-user}\n");
    assert!(
        e.contains("token `ci`: an agent-user needs a conversation_prefix"),
        "{e}"
    );
    let e = tokens("    - {name: ci, token: s, role: agent-user, conversation_prefix: cad}\n");
    assert!(
        e.contains("would reach the node's own conversations"),
        "{e}"
    );
    let e = tokens("    - {name: ci, token: s, role: reader, conversation_prefix: a-}\n");
    assert!(
        e.contains("conversation_prefix is for role agent-user"),
        "{e}"
    );
    let e = tokens("    - {name: ci, role: reader}\n");
    assert!(
        e.contains("token `ci`: give its secret as `token` or `token_file`"),
        "{e}"
    );
    let e = tokens("    - {name: ci, token: s, token_file: f, role: reader}\n");
    assert!(e.contains("not both"), "{e}");
    let e = tokens(
        "    - {name: a, token: s, role: reader}\n    - {name: a, token: t, role: reader}\n",
    );
    assert!(
        e.starts_with("cadre.yaml:5:") && e.contains("token name `a` is used twice"),
        "{e}"
    );
    let e =
        tokens("    - {name: a, token: s, role: reader}\n    - {name: b, token: s, role: admin}\n");
    assert!(e.contains("token `b` has the same secret as `a`"), "{e}");
    let e = tokens("    - {name: a, token: 'has space', role: reader}\n");
    assert!(
        e.contains("token `a`: a token must be non-empty with no spaces"),
        "{e}"
    );
    let e = tokens("    - {name: a, secret: s, role: reader}\n");
    assert!(e.contains("unknown field `secret`"), "{e}");
    let e = tokens("    - {name: a, token: s, role: reader, conversation_prefix: a-}\n");
    assert!(e.contains("api.tokens[0]"), "the path names the entry: {e}");
}

#[test]
fn the_cluster_section_and_its_errors() {
    use cadre_actors::config::{DEFAULT_FAILURE_TIMEOUT, StoreKind, host_name};
    let config = Config::parse(
        "cadre.yaml",
        "version: v1\nstore: {cluster: {}}\ncluster:\n  name: prod\n  node: b\n  \
         listen: 127.0.0.1:7501\n  advertise: b.cadre\n  seeds: [a.cadre:7500, 127.0.0.1:7502]\n  \
         cookie_file: /run/cookie\n  failure_timeout_ms: 1500\n  tls: {cert_file: n.pem, \
         key_file: n.key, ca_file: ca.pem}\n",
    )
    .expect("a cluster member's config");
    assert_eq!(config.store.kind, StoreKind::Cluster);
    let cluster = config.cluster.expect("the section");
    assert_eq!(
        (cluster.name.as_str(), cluster.node.as_str()),
        ("prod", "b")
    );
    assert_eq!(cluster.listen.to_string(), "127.0.0.1:7501");
    assert_eq!(cluster.advertise.as_deref(), Some("b.cadre"));
    assert_eq!(cluster.seeds, ["a.cadre:7500", "127.0.0.1:7502"]);
    assert_eq!(cluster.failure_timeout, Duration::from_millis(1500));
    assert!(cluster.tls.is_some());

    let defaults = Config::parse("cadre.yaml", "version: v1\ncluster: {cookie_file: c}\n")
        .expect("defaults")
        .cluster
        .expect("the section");
    assert_eq!(defaults.name, "cadre");
    assert_eq!(defaults.node, host_name());
    assert_eq!(defaults.listen.to_string(), "0.0.0.0:7500");
    assert_eq!(defaults.failure_timeout, DEFAULT_FAILURE_TIMEOUT);

    for (text, want) in [
        (
            "version: v1\nstore: {cluster: {}}\n",
            "cadre.yaml:2:18: store.cluster needs a `cluster` section",
        ),
        (
            "version: v1\ncluster: {name: x}\n",
            "cluster.cookie_file is required",
        ),
        (
            "version: v1\ncluster: {cookie_file: c, listen: 'localhost:7500'}\n",
            "cluster.listen: `localhost:7500` is not an IP address and port",
        ),
        (
            "version: v1\ncluster: {cookie_file: c, seeds: [nope]}\n",
            "cluster.seeds: `nope` is not an address",
        ),
        (
            "version: v1\ncluster: {cookie_file: c, failure_timeout_ms: 50}\n",
            "cluster.failure_timeout_ms must be 200 to 60000, got 50",
        ),
        (
            "version: v1\ncluster: {cookie_file: c, node: 'a b'}\n",
            "cluster.node: `a b` is not a name",
        ),
        (
            "version: v1\nstore: {embedded: {}, cluster: {}}\ncluster: {cookie_file: c}\n",
            "not both",
        ),
        (
            "version: v1\ncluster: {cookie_file: c, peers: []}\n",
            "unknown field `peers`",
        ),
    ] {
        let e = reject(text);
        assert!(e.contains(want), "{text:?}: {e}");
    }
}

#[test]
fn a_cluster_cookie_must_be_readable_and_long_enough() {
    let dir = std::env::temp_dir().join(format!("cadre-cookie-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cadre.yaml");
    std::fs::write(&file, "version: v1\ncluster: {cookie_file: cookie}\n").unwrap();
    std::fs::write(dir.join("cookie"), "short\n").unwrap();
    let e = Config::load(&file).expect_err("a short cookie").to_string();
    assert!(e.contains("at least 16"), "{e}");
    std::fs::remove_file(dir.join("cookie")).unwrap();
    let e = Config::load(&file).expect_err("no cookie").to_string();
    assert!(e.contains("cluster.cookie_file: cannot read"), "{e}");
    std::fs::write(dir.join("cookie"), "a-long-enough-secret\n").unwrap();
    assert!(Config::load(&file).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn store_foundationdb_is_refused_by_builds_without_it_and_checked_by_builds_with_it() {
    let text = "version: v1\nstore:\n  foundationdb: {cluster_file: fdb.cluster, prefix: p, \
                lease_ttl_ms: 3000}\ncluster: {cookie_file: c}\n";
    if cfg!(feature = "foundationdb") {
        use cadre_actors::config::StoreKind;
        let config = Config::parse("cadre.yaml", text).expect("a FoundationDB node's config");
        let StoreKind::Foundationdb(fdb) = config.store.kind else {
            panic!("store.foundationdb gives the FoundationDB store");
        };
        assert_eq!(fdb.cluster_file, std::path::PathBuf::from("fdb.cluster"));
        assert_eq!(fdb.prefix, "p");
        assert_eq!(fdb.lease_ttl, Duration::from_millis(3000));
        let e = reject(
            "version: v1\nstore: {foundationdb: {lease_ttl_ms: 10}}\ncluster: {cookie_file: c}\n",
        );
        assert!(
            e.contains("store.foundationdb.lease_ttl_ms must be 1000 to 60000, got 10"),
            "{e}"
        );
        let e = reject("version: v1\nstore: {foundationdb: {}}\n");
        assert!(
            e.contains("cadre.yaml:2:23: store.foundationdb needs a `cluster` section"),
            "{e}"
        );
    } else {
        let e = reject(text);
        assert!(
            e.starts_with("cadre.yaml:3:17:")
                && e.contains("store.foundationdb is not available in this build of cadre")
                && e.contains("--features foundationdb"),
            "{e}"
        );
    }
}
