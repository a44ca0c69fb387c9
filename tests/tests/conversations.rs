//! Conversations over real gRPC and the real CLI: exec, reconnect with last_seq, fork, error
//! codes, and a node SIGKILLed while execs stream.

use std::time::Duration;

use cadre_proto::v1::conversations_client::ConversationsClient;
use cadre_proto::v1::{
    CancelRequest, DeleteConversationRequest, Event, ExecRequest, ExecState, ForkRequest,
    SubscribeRequest, event,
};
use cadre_tests::Node;
use serde_json::Value;
use tonic::Code;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

async fn client(node: &Node) -> ConversationsClient<tonic::transport::Channel> {
    ConversationsClient::connect(format!("http://{}", node.addr))
        .await
        .unwrap()
}

fn exec(conversation: &str, input: &str) -> ExecRequest {
    ExecRequest {
        conversation_id: conversation.into(),
        agent_id: "echo".into(),
        input: input.into(),
        last_seq: 0,
        resume: false,
    }
}

async fn collect(mut s: tonic::Streaming<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(e) = s.message().await.unwrap() {
        out.push(e);
    }
    out
}

/// Runs an echo exec to its end.
async fn run_exec(
    c: &mut ConversationsClient<tonic::transport::Channel>,
    conversation: &str,
    input: &str,
) -> Vec<Event> {
    collect(
        c.exec(exec(conversation, input))
            .await
            .unwrap()
            .into_inner(),
    )
    .await
}

/// Forks `src` into `mid` after its exec's RUNNING (seq 2), before the output: `mid` holds an
/// unfinished exec.
async fn fork_mid_exec(c: &mut ConversationsClient<tonic::transport::Channel>) {
    c.fork(ForkRequest {
        src_conversation_id: "src".into(),
        at_seq: 2,
        dest_conversation_id: "mid".into(),
        patch: None,
    })
    .await
    .unwrap();
}

fn output(e: &Event) -> Option<&str> {
    match &e.kind {
        Some(event::Kind::OutputEmitted(o)) => Some(&o.text),
        _ => None,
    }
}

#[test]
fn cli_exec_prints_outputs_and_how_to_resume() {
    let node = Node::start("version: v1\n");
    let out = node.cli(&["exec", "--agent", "echo", "--input", "hello there"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello there\n");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let tail = err.lines().last().unwrap();
    assert!(
        tail.starts_with("conversation=c-") && tail.ends_with(" seq=4"),
        "{err}"
    );
    let conversation = tail
        .split(' ')
        .next()
        .unwrap()
        .trim_start_matches("conversation=");

    // Reconnecting with --last-seq prints exactly the later events.
    let again = node.cli(&[
        "exec",
        "--conversation",
        conversation,
        "--last-seq",
        "2",
        "-o",
        "json",
    ]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let seqs: Vec<u64> = String::from_utf8_lossy(&again.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [3, 4]);

    // Continue the conversation; the log shows both execs in order.
    let more = node.cli(&[
        "exec",
        "--agent",
        "echo",
        "--input",
        "more",
        "--conversation",
        conversation,
    ]);
    assert!(more.status.success());
    assert!(String::from_utf8_lossy(&more.stderr).contains(" seq=8"));
    let log = node.cli(&["conversations", "log", conversation, "-o", "json"]);
    let types: Vec<String> = String::from_utf8_lossy(&log.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(types.len(), 8);
    assert_eq!(types[0], "input_received");
    assert_eq!(types[7], "exec_state_changed");
    let past = node.cli(&["conversations", "log", conversation, "--after-seq", "99"]);
    assert_eq!(past.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&past.stderr).contains("OutOfRange"),
        "{}",
        String::from_utf8_lossy(&past.stderr)
    );
    let at_end = node.cli(&["conversations", "log", conversation, "--after-seq", "8"]);
    assert!(at_end.status.success() && at_end.stdout.is_empty());
    let ls = node.cli(&["conversations", "ls", "-o", "json"]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains(conversation));
}

#[test]
fn a_dropped_stream_resumes_with_exactly_the_missing_events() {
    let node = Node::start("version: v1\n");
    rt().block_on(async {
        let mut c = client(&node).await;
        let first = run_exec(&mut c, "conv-a", "one").await;
        assert_eq!(
            first.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        // Start a second exec, read one event, drop the stream mid-way.
        let mut s = c.exec(exec("conv-a", "two")).await.unwrap().into_inner();
        let seen = s.message().await.unwrap().unwrap();
        assert_eq!(seen.seq, 5);
        drop(s);
        let rest = collect(
            c.exec(ExecRequest {
                last_seq: seen.seq,
                ..exec("conv-a", "")
            })
            .await
            .unwrap()
            .into_inner(),
        )
        .await;
        assert_eq!(
            rest.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [6, 7, 8],
            "none missing, none twice"
        );
        assert_eq!(output(&rest[1]), Some("two"));
    });
}

#[test]
fn forks_share_the_prefix_and_continue_separately() {
    let node = Node::start("version: v1\n");
    rt().block_on(async {
        let mut c = client(&node).await;
        run_exec(&mut c, "main", "first").await;
        run_exec(&mut c, "main", "second").await;
        let fork = c
            .fork(ForkRequest {
                src_conversation_id: "main".into(),
                at_seq: 4,
                dest_conversation_id: "branch".into(),
                patch: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (fork.last_seq, fork.forked_from.as_str(), fork.forked_at_seq),
            (5, "main", 4)
        );
        let on_branch = run_exec(&mut c, "branch", "branch work").await;
        assert_eq!(on_branch.first().unwrap().seq, 6);
        let on_main = run_exec(&mut c, "main", "main work").await;
        assert_eq!(on_main.first().unwrap().seq, 9);
        let branch = read_through(&mut c, "branch", 9).await;
        let outputs: Vec<_> = branch.iter().filter_map(output).collect();
        assert_eq!(
            outputs,
            ["first", "branch work"],
            "the branch has the prefix, not main's later work"
        );
        assert!(matches!(branch[4].kind, Some(event::Kind::Forked(_))));

        // Errors: past the end, existing destination, unknown source.
        let past = c
            .fork(ForkRequest {
                src_conversation_id: "main".into(),
                at_seq: 99,
                dest_conversation_id: "x".into(),
                patch: None,
            })
            .await
            .unwrap_err();
        assert_eq!(past.code(), Code::OutOfRange, "{past:?}");
        let exists = c
            .fork(ForkRequest {
                src_conversation_id: "main".into(),
                at_seq: 2,
                dest_conversation_id: "branch".into(),
                patch: None,
            })
            .await
            .unwrap_err();
        assert_eq!(exists.code(), Code::AlreadyExists, "{exists:?}");
        let missing = c
            .fork(ForkRequest {
                src_conversation_id: "nope".into(),
                at_seq: 1,
                dest_conversation_id: String::new(),
                patch: None,
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        let list = c
            .list(cadre_proto::v1::ListConversationsRequest {
                after: String::new(),
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<_> = list
            .conversations
            .iter()
            .map(|c| c.conversation_id.as_str())
            .collect();
        assert!(
            !ids.contains(&"x"),
            "a refused fork writes nothing: {ids:?}"
        );
    });
}

/// Reads a conversation from the start through `seq` (subscriptions never end by themselves).
async fn read_through(
    c: &mut ConversationsClient<tonic::transport::Channel>,
    conversation: &str,
    seq: u64,
) -> Vec<Event> {
    let mut s = c
        .subscribe(SubscribeRequest {
            conversation_id: conversation.into(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while out.len() < seq as usize {
        out.push(s.message().await.unwrap().expect("more events"));
    }
    out
}

#[test]
fn errors_carry_the_right_status_codes() {
    let node = Node::start("version: v1\n");
    rt().block_on(async {
        let mut c = client(&node).await;
        run_exec(&mut c, "known", "hi").await;
        let unknown = c
            .subscribe(SubscribeRequest {
                conversation_id: "nope".into(),
                after_seq: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);
        let past = c
            .exec(ExecRequest {
                last_seq: 50,
                ..exec("known", "")
            })
            .await
            .unwrap_err();
        assert_eq!(past.code(), Code::OutOfRange);
        assert!(past.message().contains("last seq 4"), "{past:?}");
        let bad_agent = c
            .exec(ExecRequest {
                agent_id: "gpt-9".into(),
                ..exec("", "x")
            })
            .await
            .unwrap_err();
        assert_eq!(bad_agent.code(), Code::InvalidArgument);
        assert!(
            bad_agent.message().starts_with("agent_id:"),
            "{bad_agent:?}"
        );
        let nothing = c.exec(exec("", "")).await.unwrap_err();
        assert_eq!(nothing.code(), Code::InvalidArgument);
        assert!(nothing.message().starts_with("input:"), "{nothing:?}");
    });
    let out = node.cli(&["exec", "--agent", "nope", "--input", "x"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    let out = node.cli(&["conversations", "show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_node_killed_while_execs_stream_keeps_every_event_a_client_saw() {
    let mut node = Node::start("version: v1\n");
    let data = node.dir.path().join("data");
    let seen: Vec<Event> = rt().block_on(async {
        let mut c = client(&node).await;
        let mut seen = Vec::new();
        let killer = {
            let pid = node.pid();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            })
        };
        'outer: for i in 0.. {
            let conversation = format!("k{}", i % 4);
            let Ok(resp) = c.exec(exec(&conversation, &format!("msg {i}"))).await else {
                break;
            };
            let mut s = resp.into_inner();
            loop {
                match s.message().await {
                    Ok(Some(e)) => seen.push(e),
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
        killer.await.unwrap();
        seen
    });
    assert!(!seen.is_empty());
    let _ = node.wait_exit(Duration::from_secs(10));

    // Restart on the same data dir.
    let node = Node::start_with_data("version: v1\n", &data);
    rt().block_on(async {
        let mut c = client(&node).await;
        for conversation in ["k0", "k1", "k2", "k3"] {
            let mine: Vec<&Event> = seen
                .iter()
                .filter(|e| e.conversation_id == conversation)
                .collect();
            let Some(last_seen) = mine.last() else {
                continue;
            };
            let log = read_through(&mut c, conversation, last_seen.seq).await;
            for e in &mine {
                let stored = &log[e.seq as usize - 1];
                assert_eq!(
                    (stored.seq, &stored.kind),
                    (e.seq, &e.kind),
                    "{conversation} seq {}",
                    e.seq
                );
            }
            let end = c
                .get(cadre_proto::v1::GetConversationRequest {
                    conversation_id: conversation.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .last_seq;
            let next = collect(
                c.exec(exec(conversation, "after restart"))
                    .await
                    .unwrap()
                    .into_inner(),
            )
            .await;
            assert_eq!(
                next[0].seq,
                end + 1,
                "{conversation}: numbering continues without a gap"
            );
        }
    });
}

#[test]
fn concurrent_execs_on_one_conversation_never_interleave() {
    let node = Node::start("version: v1\n");
    rt().block_on(async {
        let mut tasks = Vec::new();
        for i in 0..16 {
            let mut c = client(&node).await;
            tasks.push(tokio::spawn(async move {
                match c.exec(exec("busy", &format!("try {i}"))).await {
                    Ok(s) => Ok(collect(s.into_inner()).await),
                    Err(status) => Err(status),
                }
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(events) => {
                    assert_eq!(events.len(), 4);
                    ok += 1;
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                    assert!(
                        status.message().contains("already has a running exec `e-"),
                        "{status:?}"
                    );
                }
            }
        }
        assert!(ok >= 1);
        // Each exec's four events sit together, in order.
        let mut c = client(&node).await;
        let log = read_through(&mut c, "busy", ok * 4).await;
        for exec in log.chunks(4) {
            assert!(
                exec.iter().all(|e| e.exec_id == exec[0].exec_id),
                "interleaved execs: {log:#?}"
            );
            assert!(matches!(exec[0].kind, Some(event::Kind::InputReceived(_))));
        }
        // Right after an exec's stream ends, the next exec is accepted.
        for i in 0..20 {
            collect(
                c.exec(exec("busy", &format!("next {i}")))
                    .await
                    .unwrap()
                    .into_inner(),
            )
            .await;
        }
    });
}

#[test]
fn resume_continues_an_unfinished_exec_once() {
    let node = Node::start("version: v1\n");
    rt().block_on(async {
        let mut c = client(&node).await;
        run_exec(&mut c, "src", "finish me").await;
        // A fork taken mid-exec (after RUNNING, before the output) holds an unfinished exec.
        fork_mid_exec(&mut c).await;
        let nothing_to_do = c
            .exec(ExecRequest {
                resume: true,
                ..exec("src", "")
            })
            .await
            .unwrap_err();
        assert_eq!(
            nothing_to_do.code(),
            Code::FailedPrecondition,
            "{nothing_to_do:?}"
        );
    });
    let out = node.cli(&["exec", "--conversation", "mid", "--resume"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "finish me\n",
        "the agent ran from the log"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("conversation=mid seq=5"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt().block_on(async {
        let mut c = client(&node).await;
        let log = read_through(&mut c, "mid", 5).await;
        assert!(matches!(log[2].kind, Some(event::Kind::Forked(_))));
        assert_eq!(output(&log[3]), Some("finish me"));
        assert!(
            log[1..]
                .iter()
                .all(|e| e.exec_id == log[0].exec_id || e.exec_id.is_empty())
        );
        let again = c
            .exec(ExecRequest {
                resume: true,
                ..exec("mid", "")
            })
            .await
            .unwrap_err();
        assert_eq!(
            again.code(),
            Code::FailedPrecondition,
            "a finished exec is not run twice"
        );
    });
}

#[test]
fn cancel_ends_an_unfinished_exec_and_frees_the_conversation() {
    let node = Node::start("version: v1\n");
    let exec_id = rt().block_on(async {
        let mut c = client(&node).await;
        let first = run_exec(&mut c, "src", "never mind").await;
        fork_mid_exec(&mut c).await;
        let cancel = |conversation: &str, exec_id: &str| CancelRequest {
            conversation_id: conversation.into(),
            exec_id: exec_id.into(),
            reason: String::new(),
        };
        let unknown = c.cancel(cancel("nope", "")).await.unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
        let finished = c.cancel(cancel("src", "")).await.unwrap_err();
        assert_eq!(finished.code(), Code::FailedPrecondition, "{finished:?}");
        let other = c.cancel(cancel("mid", "e-other")).await.unwrap_err();
        assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
        assert!(other.message().contains(&first[0].exec_id), "{other:?}");
        let log = read_through(&mut c, "mid", 3).await;
        assert_eq!(log.len(), 3, "refused cancels wrote nothing");
        first[0].exec_id.clone()
    });
    let out = node.cli(&[
        "cancel",
        "--conversation",
        "mid",
        "--reason",
        "user stopped it",
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["exec_state"], "cancelled", "{c}");
    assert_eq!(c["exec_id"], exec_id.as_str());
    assert_eq!(c["last_seq"], 4);
    let again = node.cli(&["cancel", "--conversation", "mid"]);
    assert_eq!(again.status.code(), Some(1), "nothing left to cancel");
    rt().block_on(async {
        let mut c = client(&node).await;
        let log = read_through(&mut c, "mid", 4).await;
        match &log[3].kind {
            Some(event::Kind::ExecStateChanged(s)) => {
                assert_eq!(s.state, ExecState::Cancelled as i32);
                assert_eq!(s.reason, "user stopped it");
                assert_eq!(log[3].exec_id, exec_id);
            }
            other => panic!("expected the CANCELLED state change, got {other:?}"),
        }
        let resume = c
            .exec(ExecRequest {
                resume: true,
                ..exec("mid", "")
            })
            .await
            .unwrap_err();
        assert_eq!(resume.code(), Code::FailedPrecondition, "{resume:?}");
        let next = run_exec(&mut c, "mid", "next").await;
        assert_eq!(next.iter().filter_map(output).collect::<Vec<_>>(), ["next"]);
        assert_eq!(next[0].seq, 5, "the conversation goes on after a cancel");
    });
}

#[test]
fn delete_removes_a_conversation_for_good() {
    let mut node = Node::start("version: v1\n");
    let data = node.dir.path().join("data");
    let refusals = rt().block_on(async {
        let mut c = client(&node).await;
        run_exec(&mut c, "gone", "bye").await;
        run_exec(&mut c, "kept", "stay").await;
        c.fork(ForkRequest {
            src_conversation_id: "gone".into(),
            at_seq: 4,
            dest_conversation_id: "gone-fork".into(),
            patch: None,
        })
        .await
        .unwrap();
        // A delete racing an exec: refused while the exec runs, or else the exec is refused
        // while the delete runs, or the delete comes after the exec ended.
        let mut other = client(&node).await;
        let mut refusals = [0; 2];
        for i in 0..30 {
            let conversation = format!("race-{i}");
            run_exec(&mut c, &conversation, "first").await;
            let delete = DeleteConversationRequest {
                conversation_id: conversation.clone(),
            };
            let (started, deleted) =
                tokio::join!(c.exec(exec(&conversation, "second")), other.delete(delete));
            // Some(true): the exec ran to its end, after the delete or before it; Some(false):
            // it was refused; None: its stream ended with NOT_FOUND, the delete having come
            // before its first append (it ran not at all) or after its last (it ran whole).
            let ran = match started {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(_)) => {}
                            Ok(None) => break Some(true),
                            Err(status) => {
                                assert_eq!(status.code(), Code::NotFound, "{status:?}");
                                break None;
                            }
                        }
                    }
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                    assert!(status.message().contains("being deleted"), "{status:?}");
                    refusals[1] += 1;
                    Some(false)
                }
            };
            match deleted {
                Ok(d) => {
                    let events = d.get_ref().events;
                    match ran {
                        // The delete came first: the exec started the conversation over.
                        Some(true) if events == 4 => {
                            let log = read_through(&mut c, &conversation, 4).await;
                            assert_eq!(log[0].seq, 1, "the conversation started over");
                        }
                        Some(true) => assert_eq!(events, 8),
                        Some(false) => assert_eq!(events, 4),
                        None => assert!(events == 4 || events == 8, "{events}"),
                    }
                }
                Err(status) => {
                    assert_ne!(ran, Some(false), "one of the two goes ahead");
                    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                    assert!(
                        status.message().contains("running exec")
                            && status.message().contains("cadre cancel"),
                        "{status:?}"
                    );
                    refusals[0] += 1;
                    let log = read_through(&mut c, &conversation, 8).await;
                    assert_eq!(log.len(), 8, "a refused delete removes nothing");
                }
            }
        }
        refusals
    });
    eprintln!(
        "of 30 races: {} deletes met a running exec, {} execs met a delete",
        refusals[0], refusals[1]
    );

    let audit = node.cli(&["conversations", "delete", "cadre.audit"]);
    assert_eq!(
        audit.status.code(),
        Some(2),
        "the audit log is not deletable"
    );
    let unknown = node.cli(&["conversations", "delete", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("NotFound"));
    let out = node.cli(&["conversations", "delete", "gone", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deleted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        deleted,
        serde_json::json!({"conversation_id": "gone", "events": 4})
    );
    assert_eq!(
        node.cli(&["conversations", "show", "gone"]).status.code(),
        Some(1)
    );

    // Killed right after: the log must not bring the events back.
    node.stop(libc::SIGKILL);
    let node = Node::start_with_data("version: v1\n", &data);
    let show = node.cli(&["conversations", "show", "gone"]);
    assert_eq!(show.status.code(), Some(1), "deleted for good");
    rt().block_on(async {
        let mut c = client(&node).await;
        assert_eq!(read_through(&mut c, "kept", 4).await.len(), 4);
        assert_eq!(
            read_through(&mut c, "gone-fork", 5).await.len(),
            5,
            "a fork is a copy and stays"
        );
        let next = run_exec(&mut c, "gone", "again").await;
        assert_eq!(next[0].seq, 1, "the id starts a new conversation");
    });
}
