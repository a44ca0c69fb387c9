//! The runtime core's modules depend on each other in one direction only: no import cycle
//! between the top-level modules of `cadre-actors`, nor between the controller's parts.
//! (A module's own files may use each other; cycles between modules are what make the code
//! hard to follow and to split.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each source file of `actors/src`, with the graph node it belongs to: its top-level module
/// (`agent/run.rs` → `agent`), or `controller::PART` for the controller's files.
fn files(src: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            let node = match parts.as_slice() {
                [file] if file == "lib" => continue,
                [file] => file.clone(),
                [dir, file] if dir == "controller" && file != "mod" => {
                    format!("controller::{file}")
                }
                [dir, ..] => dir.clone(),
                [] => continue,
            };
            out.push((node, path));
        }
    }
    out
}

/// The modules a file uses: `crate::NAME` anywhere in code (not in comments), and for the
/// controller's files `super::NAME` of a sibling part.
fn uses(node: &str, text: &str, nodes: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let controller_part = node.starts_with("controller::");
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        for (prefix, scope) in [("crate::", ""), ("super::", "controller::")] {
            if prefix == "super::" && !controller_part {
                continue;
            }
            for (i, _) in code.match_indices(prefix) {
                let rest = &code[i + prefix.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let mut target = format!("{scope}{name}");
                if prefix == "crate::" && name == "controller" {
                    // `crate::controller::writer::…` names a part; `crate::controller::X` the
                    // controller's public face (its mod.rs).
                    let part: String = rest["controller::".len().min(rest.len())..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let candidate = format!("controller::{part}");
                    target = if nodes.contains(&candidate) {
                        candidate
                    } else {
                        "controller".into()
                    };
                }
                if prefix == "super::" && !nodes.contains(&target) {
                    target = "controller".into();
                }
                if nodes.contains(&target) && target != node {
                    out.insert(target);
                }
            }
        }
    }
    out
}

/// A cycle in `graph`, as the list of nodes around it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|n| n == node).expect("on the stack");
                let mut cycle = stack[from..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = files(&src);
    let mut nodes: BTreeSet<String> = files.iter().map(|(n, _)| n.clone()).collect();
    nodes.insert("controller".into());
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (node, path) in &files {
        let text = std::fs::read_to_string(path).expect("read source");
        graph
            .entry(node.clone())
            .or_default()
            .extend(uses(node, &text, &nodes));
    }
    graph
}

#[test]
fn the_modules_of_the_runtime_core_have_no_import_cycle() {
    let graph = module_graph();
    // The graph is real: the modules named in the architecture are in it, with edges.
    for module in [
        "agent",
        "exec",
        "event_log",
        "supervisor",
        "child",
        "spec",
        "tree",
    ] {
        assert!(
            graph.contains_key(module),
            "no module `{module}`: {graph:?}"
        );
    }
    assert!(graph["exec"].contains("event_log"), "{graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" → "));
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    graph.get_mut("c").expect("c").clear();
    assert_eq!(find_cycle(&graph), None);
}

#[test]
fn uses_reads_code_not_comments() {
    let nodes: BTreeSet<String> = ["agent", "tree", "controller", "controller::keys"]
        .into_iter()
        .map(String::from)
        .collect();
    let text = "// crate::tree is mentioned here\nuse crate::agent::AgentSpec;\nuse crate::controller::keys::x;\n";
    let used = uses("spec", text, &nodes);
    assert_eq!(
        used,
        ["agent", "controller::keys"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
