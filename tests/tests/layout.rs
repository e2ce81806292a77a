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

#[test]
fn the_walker_is_a_leaf() {
    let tree = normal_deps("hubfs-walker");
    let hubfs: Vec<_> = crate_names(&tree)
        .into_iter()
        .filter(|n| n.starts_with("hubfs-"))
        .collect();
    assert_eq!(
        hubfs,
        ["hubfs-walker"],
        "the walker depends on no other hubfs crate:\n{tree}"
    );
}
