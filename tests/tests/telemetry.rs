//! What operators watch: a real Prometheus scrapes a node's `/metrics`; a real OTLP receiver
//! gets its exec traces.

use std::time::{Duration, Instant};

use cadre_tests::otlp::OtlpReceiver;
use cadre_tests::prometheus::Prometheus;
use cadre_tests::servers::{ModelServer, RecordServer, record_call, wait_for_record_tool};
use cadre_tests::{Node, TempDir, free_port, pid_of};
use serde_json::{Value, json};

#[test]
fn prometheus_scrapes_execs_histograms_and_restarts() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let node = Node::start(&format!(
        "version: v1\ntelemetry: {{ metrics_listen: \"{metrics}\" }}\nsupervisor:\n  \
         intensity: 10\n  children:\n    - {{ id: sleeper, process: {{ command: [sleep, \"1000\"] }} }}\n"
    ));
    let (code, text) = cadre_tests::http("GET", &format!("http://{metrics}/metrics"), "", None)
        .expect("GET /metrics");
    assert_eq!(code, 200);
    assert!(text.contains("cadre_build_info{version="), "{text}");
    let prometheus = Prometheus::start(&[&metrics]);
    prometheus
        .wait_for("up", 1.0, Duration::from_secs(20))
        .expect("the node is scraped");

    const N: usize = 7;
    for i in 0..N {
        let out = node.exec_echo(&format!("c{i}"), "hello");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let n = N as f64;
    for (query, want) in [
        ("cadre_execs_started_total{agent=\"echo\"}", n),
        (
            "cadre_execs_ended_total{agent=\"echo\",state=\"completed\"}",
            n,
        ),
        ("cadre_exec_duration_seconds_count{agent=\"echo\"}", n),
    ] {
        prometheus
            .wait_for(query, want, Duration::from_secs(20))
            .unwrap_or_else(|got| panic!("{query}: want {want}, got {got:?}"));
    }
    // Non-empty histograms: a median inside the buckets, and appends in the log's.
    let median = prometheus
        .query("histogram_quantile(0.5, sum by (le) (cadre_exec_duration_seconds_bucket))")
        .expect("an exec duration median");
    assert!(median > 0.0 && median < 10.0, "median {median}");
    assert!(
        prometheus
            .query("cadre_log_append_duration_seconds_count")
            .unwrap()
            >= n * 2.0
    );
    assert!(prometheus.query("cadre_log_batch_size_count").unwrap() >= 1.0);

    let restarts = "cadre_supervisor_restarts_total{path=\"root/sleeper\"}";
    let before = prometheus.query(restarts).unwrap_or(0.0);
    let pid = pid_of(&node.tree(), "root/sleeper");
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    prometheus
        .wait_for(restarts, before + 1.0, Duration::from_secs(20))
        .unwrap_or_else(|got| panic!("{restarts}: want {}, got {got:?}", before + 1.0));
    let restarted = node.wait_tree("the sleeper's new pid", Duration::from_secs(10), |t| {
        cadre_tests::find(t, "root/sleeper")["pid"]
            .as_u64()
            .is_some_and(|p| p != u64::from(pid))
    });
    assert_eq!(cadre_tests::find(&restarted, "root/sleeper")["restarts"], 1);
}

/// The scribe agent against a scripted model and the record tool, traced to `otlp`.
fn traced_config(model: &ModelServer, record: &RecordServer, otlp: &OtlpReceiver) -> String {
    format!(
        r#"
version: v1
telemetry: {{ otlp_endpoint: "{otlp}" }}
{models}supervisor:
  intensity: 5
  period_secs: 30
  children:
{rec}    - id: scribe
      agent: {{ model: scripted, tools: ["rec.*"] }}
"#,
        otlp = otlp.endpoint,
        models = model.models_yaml(),
        rec = record.child_yaml(),
    )
}

/// `(trace id, span id)` of a W3C `traceparent`.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (parts[1].to_string(), parts[2].to_string())
}

fn named<'a>(spans: &'a [Value], name: &str, trace: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["name"] == name && s["trace_id"] == trace)
        .collect()
}

/// The exec's journaled trace context (its `InputReceived`).
fn journaled_traceparent(node: &Node, conversation: &str) -> String {
    node.log_so_far(conversation)[0]["trace_parent"]
        .as_str()
        .expect("the trace context is journaled with the exec")
        .to_string()
}

#[test]
fn an_exec_is_traced_in_genai_spans_passed_on_and_continued_after_sigkill() {
    let otlp = OtlpReceiver::start();
    let usage = json!({"prompt_tokens": 31, "completion_tokens": 7});
    let mut first = record_call("a");
    first["usage"] = usage.clone();
    let model = ModelServer::start(json!([
        first,
        record_call("b"),
        {"content": "done", "usage": usage},
        record_call("c"),
        record_call("d"),
        {"content": "done again"},
    ]));
    // Slow enough that a kill lands while the second exec's call runs.
    let record = RecordServer::start(1500);
    let dir = TempDir::new("traces");
    let config = dir.path().join("cadre.yaml");
    std::fs::write(&config, traced_config(&model, &record, &otlp)).unwrap();
    let data = dir.path().join("data");
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let mut node = Node::start_from_file_with_env(&config, &data, &env);
    wait_for_record_tool(&node);

    // A multi-step exec: the whole span tree.
    let out = node.exec("scribe", "traced", "record two notes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (trace, exec_span) = ids(&journaled_traceparent(&node, "traced"));
    let spans = otlp.wait_for("invoke_agent scribe", |s| {
        !named(s, "invoke_agent scribe", &trace).is_empty()
    });
    let root = named(&spans, "invoke_agent scribe", &trace)[0];
    assert_eq!(root["span_id"], exec_span);
    assert_eq!(root["service"], "cadre");
    let a = &root["attributes"];
    assert_eq!(a["gen_ai.operation.name"], "invoke_agent");
    assert_eq!(a["gen_ai.agent.name"], "scribe");
    assert_eq!(a["gen_ai.conversation.id"], "traced");
    assert_eq!(a["cadre.seq.first"], 1);
    assert_eq!(
        a["cadre.seq.last"],
        node.log_so_far("traced").last().unwrap()["seq"]
    );
    let chats = named(&spans, "chat scripted", &trace);
    let tools = named(&spans, "execute_tool rec.record", &trace);
    assert_eq!((chats.len(), tools.len()), (3, 2), "{spans:?}");
    for span in chats.iter().chain(&tools) {
        assert_eq!(span["parent_span_id"], exec_span, "{span}");
    }
    let chat = &chats[0]["attributes"];
    assert_eq!(chat["gen_ai.operation.name"], "chat");
    assert_eq!(chat["gen_ai.request.model"], "scripted");
    assert_eq!(chat["gen_ai.usage.input_tokens"], 31);
    assert_eq!(chat["gen_ai.usage.output_tokens"], 7);
    assert_eq!(
        chat["gen_ai.response.finish_reasons"],
        json!(["tool_calls"])
    );
    let last_chat = chats
        .iter()
        .find(|c| c["attributes"]["gen_ai.response.finish_reasons"] == json!(["stop"]));
    assert!(last_chat.is_some(), "{chats:?}");
    let tool = &tools[0]["attributes"];
    assert_eq!(tool["gen_ai.operation.name"], "execute_tool");
    assert_eq!(tool["gen_ai.tool.name"], "rec.record");
    assert!(
        tool["gen_ai.tool.call.id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    // The model endpoint and the MCP server were handed the context of the calls' spans.
    let requests = model.requests();
    let (model_trace, model_parent) = ids(requests[0]["traceparents"][0].as_str().unwrap());
    assert_eq!(model_trace, trace);
    assert!(chats.iter().any(|c| c["span_id"] == model_parent));
    let effects = record.effects();
    let (tool_trace, tool_parent) = ids(effects[0]["traceparent"].as_str().unwrap());
    assert_eq!(tool_trace, trace);
    assert!(tools.iter().any(|t| t["span_id"] == tool_parent));

    // SIGKILL while the second exec's tool call runs: the resumed exec continues its trace.
    let mut exec = node.exec_in_background("scribe", "crashy", "record two more");
    let deadline = Instant::now() + Duration::from_secs(60);
    while node
        .log_so_far("crashy")
        .iter()
        .filter(|e| e["type"] == "tool_called")
        .count()
        < 1
    {
        assert!(Instant::now() < deadline, "{}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (crashy, crashy_span) = ids(&journaled_traceparent(&node, "crashy"));
    // The spans ended before the kill are out (the first model call's).
    otlp.wait_for("the first run's chat span", |s| {
        !named(s, "chat scripted", &crashy).is_empty()
    });
    node.stop(libc::SIGKILL);
    let _ = exec.wait();
    node = Node::start_from_file_with_env(&config, &data, &env);
    let spans = otlp.wait_for("the resumed invoke_agent span", |s| {
        named(s, "invoke_agent scribe", &crashy)
            .iter()
            .any(|r| r["attributes"]["cadre.resumed"] == true)
    });
    let resumed = named(&spans, "invoke_agent scribe", &crashy);
    assert_eq!(
        resumed.len(),
        1,
        "the first run's root never ended: {resumed:?}"
    );
    assert_eq!(resumed[0]["parent_span_id"], crashy_span);
    let later: Vec<&Value> = spans
        .iter()
        .filter(|s| s["parent_span_id"] == resumed[0]["span_id"])
        .collect();
    assert!(
        later.iter().any(|s| s["name"] == "chat scripted"),
        "the resumed exec's model call is in the same trace: {later:?}"
    );
    assert!(later.iter().all(|s| s["trace_id"] == crashy));
    let c = node.json_lines(&["conversations", "show", "crashy", "-o", "json"]);
    assert_eq!(c[0]["exec_state"], "completed", "{c:?}");
}
