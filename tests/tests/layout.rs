//! The crate layout's one-way arrows, checked against cargo's own view.
//!
//! The FUSE crate must stay free of the quota controller's dependencies (the
//! Kubernetes client and the HTTP client to the hub): a node's FUSE servers
//! load none of that code. `cargo tree` answers from Cargo.lock, offline.

use std::process::Command;

fn normal_deps(package: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--locked",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn crate_names(tree: &str) -> Vec<&str> {
    tree.lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

#[test]
fn the_fuse_crate_does_not_pull_the_controllers_dependencies() {
    let tree = normal_deps("hubfs-fuse");
    let names = crate_names(&tree);
    assert!(names.contains(&"fuser"), "the tree was read: {tree}");
    for banned in [
        "kube",
        "kube-runtime",
        "kube-client",
        "k8s-openapi",
        "reqwest",
        "hubfs-quota",
        "serde_yaml",
    ] {
        assert!(
            !names.contains(&banned),
            "hubfs-fuse depends on {banned}:\n{tree}"
        );
    }
}

/// Asserts that `package` depends on no other hubfs crate.
fn assert_leaf(package: &str) {
    let tree = normal_deps(package);
    let hubfs: Vec<_> = crate_names(&tree)
        .into_iter()
        .filter(|n| n.starts_with("hubfs-"))
        .collect();
    assert_eq!(
        hubfs,
        [package],
        "{package} depends on no other hubfs crate:\n{tree}"
    );
}

#[test]
fn the_walker_is_a_leaf() {
    assert_leaf("hubfs-walker");
}

#[test]
fn the_sandbox_is_a_leaf() {
    assert_leaf("hubfs-sandbox");
}

/// The modules of `dir` (one `.rs` file each) that each module names through
/// `super::<module>`: the edges of the module graph among siblings.
fn sibling_uses(dir: &std::path::Path) -> Vec<(String, Vec<String>)> {
    let mut modules: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    modules.sort();
    let names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
    modules
        .iter()
        .map(|(name, text)| {
            let uses = names
                .iter()
                .filter(|other| *other != name)
                .filter(|other| {
                    // Outside `#[cfg(test)]` modules: tests may name anything.
                    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
                    code.contains(&format!("super::{other}::"))
                        || code.contains(&format!("super::{other};"))
                        || code.contains(&format!("super::{other},"))
                })
                .cloned()
                .collect();
            (name.clone(), uses)
        })
        .collect()
}

/// A cycle in the graph, if any (depth-first search).
fn find_cycle(graph: &[(String, Vec<String>)]) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &[(String, Vec<String>)],
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.iter().any(|d| d == node) {
            return None;
        }
        path.push(node.to_owned());
        let edges = graph
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, e)| e.clone());
        for next in edges.unwrap_or_default() {
            if let Some(c) = visit(&next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.push(node.to_owned());
        None
    }
    let mut done = Vec::new();
    graph
        .iter()
        .find_map(|(n, _)| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g = |edges: &[(&str, &[&str])]| -> Vec<(String, Vec<String>)> {
        edges
            .iter()
            .map(|(n, e)| (n.to_string(), e.iter().map(|s| s.to_string()).collect()))
            .collect()
    };
    assert_eq!(
        find_cycle(&g(&[
            ("mount", &["mount_home"]),
            ("mount_home", &["mount"])
        ])),
        Some(vec!["mount".into(), "mount_home".into(), "mount".into()])
    );
    assert_eq!(
        find_cycle(&g(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[])])),
        None
    );
}

#[test]
fn the_binarys_subcommand_modules_have_no_cycle() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../driver/src/cmd");
    let graph = sibling_uses(&dir);
    let mount = graph
        .iter()
        .find(|(n, _)| n == "mount")
        .expect("cmd/mount.rs");
    assert!(
        mount.1.contains(&"mount_s3".to_owned()) && mount.1.contains(&"mount_home".to_owned()),
        "the graph was read: {graph:?}"
    );
    assert_eq!(
        find_cycle(&graph),
        None,
        "module cycle in driver/src/cmd: {graph:?}"
    );
}
