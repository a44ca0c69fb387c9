//! The docs stay true to the repo: the README is short and every link in it and in `docs/`
//! resolves inside the repo; `docs/architecture.md` names only files that exist, functions
//! that exist in the files it names, every gRPC service and every CLI command.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The README and every markdown file under `docs/`.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    for entry in std::fs::read_dir(repo().join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files
}

/// The targets of the markdown links `[text](target)` in `text`.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else { break };
        out.push(after[..end].to_string());
        rest = &after[end..];
    }
    out
}

/// Code spans (`…`) in `line`.
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

#[test]
fn the_readme_is_short_and_every_link_resolves_inside_the_repo() {
    let readme = read(&repo().join("README.md"));
    let lines = readme.lines().count();
    assert!(lines <= 250, "README.md has {lines} lines (at most 250)");
    assert!(
        readme.contains("./scripts/run.sh") && readme.contains("./scripts/test.sh"),
        "the README starts with the two commands"
    );
    assert!(
        readme.contains("docs/architecture.md"),
        "the README links the map"
    );
    let root = repo().canonicalize().expect("repo");
    for file in markdown_files() {
        let text = read(&file);
        for target in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                panic!("{}: links outside the repo: {target}", file.display());
            }
            let path = target.split('#').next().unwrap_or_default();
            if path.is_empty() {
                continue;
            }
            let resolved = file.parent().expect("dir").join(path);
            let resolved = resolved
                .canonicalize()
                .unwrap_or_else(|_| panic!("{}: broken link {target}", file.display()));
            assert!(
                resolved.starts_with(&root),
                "{}: link leaves the repo: {target}",
                file.display()
            );
        }
    }
}

#[test]
fn the_architecture_names_real_files_and_functions() {
    let map = read(&repo().join("docs/architecture.md"));
    let mut paths = 0;
    let mut functions = 0;
    // A function is checked against the last file named before it in the same paragraph.
    let mut file: Option<PathBuf> = None;
    for (n, line) in map.lines().enumerate() {
        if line.trim().is_empty() {
            file = None;
        }
        for span in code_spans(line) {
            let looks_like_path = span.contains('/')
                && !span.contains(' ')
                && !span.contains("://")
                && [
                    "actors/",
                    "cluster/",
                    "sandbox/",
                    "cli/",
                    "proto/",
                    "tests/",
                    "docs/",
                    "scripts/",
                    "examples/",
                    "deploy/",
                ]
                .iter()
                .any(|top| span.starts_with(top));
            if looks_like_path {
                paths += 1;
                let path = repo().join(span);
                assert!(
                    path.exists(),
                    "docs/architecture.md:{}: `{span}` does not exist",
                    n + 1
                );
                if span.ends_with(".rs") {
                    file = Some(path);
                }
                continue;
            }
            // `Type::function` or `function()` after a file: the file defines that function.
            let Some(file) = &file else { continue };
            let name = if let Some(f) = span.strip_suffix("()") {
                f.rsplit("::").next().unwrap_or(f)
            } else if span.contains("::") && !span.contains(' ') {
                span.rsplit("::").next().unwrap_or(span)
            } else {
                continue;
            };
            if !name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                continue;
            }
            functions += 1;
            let source = read(file);
            assert!(
                source.contains(&format!("fn {name}(")) || source.contains(&format!("fn {name}<")),
                "docs/architecture.md:{}: `{span}` is not a function of {}",
                n + 1,
                file.display()
            );
        }
    }
    assert!(paths >= 20, "the map names the code ({paths} paths)");
    assert!(
        functions >= 8,
        "the exec data flow names functions ({functions})"
    );
}

#[test]
fn the_architecture_lists_every_grpc_service_and_cli_command() {
    let map = read(&repo().join("docs/architecture.md"));
    for entry in std::fs::read_dir(repo().join("proto/cadre/v1")).expect("protos") {
        let proto = read(&entry.expect("entry").path());
        for line in proto.lines() {
            if let Some(rest) = line.strip_prefix("service ") {
                let service = rest.split_whitespace().next().expect("a name");
                assert!(
                    map.contains(&format!("`cadre.v1.{service}`")),
                    "docs/architecture.md does not list `cadre.v1.{service}`"
                );
            }
        }
    }
    let help = std::process::Command::new(cadre_tests::cadre_bin())
        .arg("--help")
        .output()
        .expect("cadre --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 10, "commands from --help: {commands:?}");
    for command in commands {
        assert!(
            map.contains(&format!("`cadre {command}")),
            "docs/architecture.md does not list `cadre {command}`"
        );
    }
}

#[test]
fn the_config_reference_is_the_output_of_cadre_config_schema() {
    let out = std::process::Command::new(cadre_tests::cadre_bin())
        .args(["config", "schema"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md")).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == docs,
        "docs/config.md differs from `cadre config schema`: run `cadre config schema > docs/config.md`"
    );
}
