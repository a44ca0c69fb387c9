//! The gRPC API fuzzed with a bounded number of requests of random fields against one real
//! node: every call ends within its deadline (no hang), succeeds or fails with a status that
//! says what is wrong (never UNKNOWN, INTERNAL or an empty message), and the node serves on.

use std::time::Duration;

use cadre_proto::v1::actors_client::ActorsClient;
use cadre_proto::v1::conversations_client::ConversationsClient;
use cadre_proto::v1::tools_client::ToolsClient;
use cadre_proto::v1::{
    ActorRequest, ApproveRequest, CallToolRequest, CancelRequest, DeleteConversationRequest,
    ExecRequest, ForkRequest, GetConversationRequest, ListConversationsRequest, SpawnRequest,
    SubscribeRequest,
};
use cadre_tests::Node;
use proptest::prelude::*;
use tonic::Code;
use tonic::transport::Channel;

/// One request of random fields.
#[derive(Debug, Clone)]
enum Call {
    Exec(String, String, String, u64, bool),
    Subscribe(String, u64),
    Get(String),
    List(String, u32),
    Fork(String, u64, String),
    Cancel(String, String),
    Delete(String),
    Approve(String, String, bool),
    Spawn(String, String),
    Stop(String),
    Restart(String),
    Actor(String),
    Tool(String, String, String),
}

/// Strings that are ids, near-ids, or anything.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        prop::sample::select(vec![
            "echo",
            "root",
            "root/web",
            "system",
            "system/controller",
            "cadre.audit",
            "cadre.actors",
            "fuzz-1",
            "fuzz-2",
            "skills.list_skills",
            "{}",
            "{\"a\":1}",
        ])
        .prop_map(str::to_string),
        "[A-Za-z0-9._:/ -]{1,12}",
        ".{0,40}",
        "x{190,210}",
    ]
}

fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(1), 2u64..20, Just(u64::MAX)]
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        (text(), text(), text(), seq(), any::<bool>())
            .prop_map(|(c, a, i, s, r)| Call::Exec(c, a, i, s, r)),
        (text(), seq()).prop_map(|(c, s)| Call::Subscribe(c, s)),
        text().prop_map(Call::Get),
        (text(), prop_oneof![Just(0u32), 1u32..50, Just(u32::MAX)])
            .prop_map(|(a, l)| Call::List(a, l)),
        (text(), seq(), text()).prop_map(|(s, a, d)| Call::Fork(s, a, d)),
        (text(), text()).prop_map(|(c, e)| Call::Cancel(c, e)),
        text().prop_map(Call::Delete),
        (text(), text(), any::<bool>()).prop_map(|(c, k, a)| Call::Approve(c, k, a)),
        (
            text(),
            prop_oneof![
                text(),
                Just("id: w\nprocess: { command: [sleep, \"9\"] }".into())
            ]
        )
            .prop_map(|(p, y)| Call::Spawn(p, y)),
        text().prop_map(Call::Stop),
        text().prop_map(Call::Restart),
        text().prop_map(Call::Actor),
        (text(), text(), text()).prop_map(|(n, a, c)| Call::Tool(n, a, c)),
    ]
}

/// Makes the call; `Err` with the status if it failed, `Ok` if it succeeded. A stream that
/// opened succeeded unless its first item, if one comes soon, is an error: a follow of a
/// conversation with nothing new rightly waits.
async fn make(channel: Channel, call: Call) -> Result<(), tonic::Status> {
    let mut conversations = ConversationsClient::new(channel.clone());
    let mut actors = ActorsClient::new(channel.clone());
    match call {
        Call::Exec(conversation_id, agent_id, input, last_seq, resume) => {
            let request = ExecRequest {
                conversation_id,
                agent_id,
                input,
                last_seq,
                resume,
            };
            let events = conversations.exec(request).await?.into_inner();
            first(events).await
        }
        Call::Subscribe(conversation_id, after_seq) => {
            let request = SubscribeRequest {
                conversation_id,
                after_seq,
            };
            let events = conversations.subscribe(request).await?.into_inner();
            first(events).await
        }
        Call::Get(conversation_id) => {
            let request = GetConversationRequest { conversation_id };
            conversations.get(request).await.map(|_| ())
        }
        Call::List(after, limit) => {
            let request = ListConversationsRequest { after, limit };
            conversations.list(request).await.map(|_| ())
        }
        Call::Fork(src_conversation_id, at_seq, dest_conversation_id) => {
            let request = ForkRequest {
                src_conversation_id,
                at_seq,
                dest_conversation_id,
                ..Default::default()
            };
            conversations.fork(request).await.map(|_| ())
        }
        Call::Cancel(conversation_id, exec_id) => {
            let request = CancelRequest {
                conversation_id,
                exec_id,
                reason: "fuzz".into(),
            };
            conversations.cancel(request).await.map(|_| ())
        }
        Call::Delete(conversation_id) => {
            let request = DeleteConversationRequest { conversation_id };
            conversations.delete(request).await.map(|_| ())
        }
        Call::Approve(conversation_id, call_id, approved) => {
            let request = ApproveRequest {
                conversation_id,
                call_id,
                approved,
                reason: String::new(),
            };
            conversations.approve(request).await.map(|_| ())
        }
        Call::Spawn(parent, spec_yaml) => {
            let request = SpawnRequest {
                parent,
                spec_yaml,
                ..Default::default()
            };
            actors.spawn(request).await.map(|_| ())
        }
        Call::Stop(path) => actors.stop(ActorRequest { path }).await.map(|_| ()),
        Call::Restart(path) => actors.restart(ActorRequest { path }).await.map(|_| ()),
        Call::Actor(path) => actors.get(ActorRequest { path }).await.map(|_| ()),
        Call::Tool(name, arguments_json, conversation_id) => {
            let request = CallToolRequest {
                name,
                arguments_json,
                conversation_id,
                approved: false,
            };
            ToolsClient::new(channel).call(request).await.map(|_| ())
        }
    }
}

/// The first item of a stream, if it comes within a second.
async fn first<T>(mut stream: tonic::Streaming<T>) -> Result<(), tonic::Status> {
    match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
        Ok(item) => item.map(|_| ()),
        Err(_) => Ok(()),
    }
}

#[test]
fn random_requests_get_clear_answers_and_the_node_serves_on() {
    let node = Node::start(
        "version: v1\nsupervisor:\n  children:\n    - { id: web, process: { command: [sleep, \"1000\"] } }\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let channel = rt.block_on(async {
        Channel::from_shared(format!("http://{}", node.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    });
    let config = ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let made = std::sync::atomic::AtomicUsize::new(0);
    let refused = std::sync::atomic::AtomicUsize::new(0);
    proptest!(config, |(call in call())| {
        made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shown = format!("{call:?}");
        let answered = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), make(channel.clone(), call)).await
        });
        let Ok(result) = answered else {
            return Err(TestCaseError::fail(format!("no answer within 10 s: {shown:.300}")));
        };
        if let Err(status) = result {
            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            prop_assert!(
                !matches!(status.code(), Code::Unknown | Code::Internal | Code::Unavailable),
                "{shown:.300}: {status:?}"
            );
            prop_assert!(status.message().len() > 5, "{shown:.300}: {status:?}");
        }
    });
    let (made, refused) = (made.into_inner(), refused.into_inner());
    assert!(
        made >= 200 && refused > made / 4,
        "{made} calls, {refused} refused"
    );
    // Still serving: a tree and an exec.
    node.tree();
    let out = node.exec_echo("after-fuzz", "still here");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
