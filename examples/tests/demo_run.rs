//! The demo, run as a user runs it: it starts its own server, prints the topology, writes the
//! two diagram files and replays to the same topology.

use std::process::Command;

#[test]
fn the_demo_prints_the_topology_and_writes_both_diagrams() {
    let exe = std::env::current_exe().unwrap();
    let demo = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join("demo");
    let binary = cim_nats::testing::find_nats_server().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(demo)
        .current_dir(dir.path())
        .env("NATS_SERVER_BIN", &binary.path)
        .env_remove("NATS_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("11 active machines, 3 networks, 10 connections"),
        "{text}"
    );
    assert!(
        text.contains("web-03 -> api-02 on management"),
        "the live log names things: {text}"
    );
    assert!(text.contains("the same topology"), "{text}");
    let dot = std::fs::read_to_string(dir.path().join("topology.dot")).unwrap();
    let mmd = std::fs::read_to_string(dir.path().join("topology.mmd")).unwrap();
    assert!(
        dot.starts_with("digraph") || dot.starts_with("graph"),
        "{dot}"
    );
    assert!(
        dot.contains("db-01") && !dot.contains("\"web-03\""),
        "{dot}"
    );
    assert!(mmd.starts_with("flowchart"), "{mmd}");
    assert!(mmd.contains("db-01"), "{mmd}");
}
