//! The multi-node harness ([`cadre_tests::Cluster`]) on independent nodes: each serves on its
//! own port and data dir, one can be SIGKILLed while the others go on, and it comes back on
//! its data dir with its log intact. (Nodes do not form one cluster yet: each lists itself.)

use cadre_proto::v1::NodesRequest;
use cadre_proto::v1::cluster_client::ClusterClient;
use cadre_tests::{Cluster, Node, alive};

/// Runs an `echo` exec on `node` in `conversation`; returns its output line.
fn echo(node: &Node, conversation: &str, input: &str) -> String {
    let out = node.exec_echo(conversation, input);
    assert!(
        out.status.success(),
        "exec on {} failed: {}\nlog:\n{}",
        node.addr,
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The addresses `Cluster.Nodes` of `node` lists.
fn members(node: &Node) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut client = ClusterClient::connect(format!("http://{}", node.addr))
            .await
            .expect("connect");
        let nodes = client
            .nodes(NodesRequest {})
            .await
            .expect("Cluster.Nodes")
            .into_inner()
            .nodes;
        nodes.into_iter().map(|n| n.address).collect()
    })
}

#[test]
fn three_independent_nodes_serve_alone_and_one_survives_sigkill_with_its_log() {
    let mut cluster = Cluster::start(3, "version: v1\n");
    assert_eq!(cluster.len(), 3);
    let addrs: Vec<String> = cluster.running().map(|(_, n)| n.addr.clone()).collect();
    let mut distinct = addrs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "each node on its own port: {addrs:?}");
    for (i, node) in cluster.running() {
        assert_eq!(
            members(node),
            vec![node.addr.clone()],
            "node {i} lists itself only"
        );
        assert!(echo(node, "smoke", &format!("hello {i}")).contains(&format!("hello {i}")));
    }

    let pids: Vec<u32> = cluster.running().map(|(_, n)| n.pid()).collect();
    cluster.kill(1);
    assert!(!alive(pids[1]), "node 1 is gone");
    for (i, node) in cluster.running() {
        assert_ne!(i, 1);
        assert!(echo(node, "smoke", "still here").contains("still here"));
    }

    let node = cluster.restart(1);
    let log = node.json_lines(&["conversations", "log", "smoke", "-o", "json"]);
    assert!(
        log.iter().any(|e| e.to_string().contains("hello 1")),
        "node 1's conversation survived the SIGKILL: {log:?}"
    );
    assert!(
        !log.iter().any(|e| e.to_string().contains("still here")),
        "nodes share nothing yet: {log:?}"
    );
    let pids: Vec<u32> = cluster.running().map(|(_, n)| n.pid()).collect();
    drop(cluster);
    for pid in pids {
        assert!(!alive(pid), "node {pid} was stopped with the cluster");
    }
}
