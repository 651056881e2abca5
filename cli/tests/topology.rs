//! The built `cim-infrastructure` binary against a real server: the topology a running
//! service's read model holds, as a table, DOT, Mermaid and JSON; a clear error when no service
//! has built the model.

use std::process::Command;
use std::time::Duration;

use cim_infrastructure_nats::domain::{
    ComputeResourceSpec, ComputeType, Hostname, InfrastructureAggregate, InfrastructureCommand,
    InfrastructureId, MessageIdentity, ResourceCapabilities, ResourceId, SystemArchitecture,
};
use cim_infrastructure_nats::projections::{ProjectionManager, ProjectionOptions};
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::testing::NatsServer;
use cim_nats::Repository;

fn tool(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cim-infrastructure"))
        .arg("--server")
        .arg(url)
        .args(args)
        .output()
        .expect("run cim-infrastructure")
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topology_as_a_table_dot_mermaid_and_json() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let client = server.connect().await.expect("connect");
    let url = server.url();

    // No model yet: one clear line, and a failure.
    let none = tool(&url, &["--timeout", "2", "topology"]);
    assert!(!none.status.success());
    let error = String::from_utf8_lossy(&none.stderr);
    assert!(
        error.starts_with("cim-infrastructure: the topology read model cannot be read")
            && error.lines().count() == 1,
        "{error}"
    );

    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("infrastructure"))
        .await
        .expect("store");
    let manager = ProjectionManager::start(&store, ProjectionOptions::default())
        .await
        .expect("topology model");
    let repo = Repository::<InfrastructureAggregate>::new(store.clone());
    let infra = InfrastructureId::new();
    let mut last = cim_nats::StreamSequence(0);
    for hostname in ["web-01", "db-01"] {
        let outcome = repo
            .execute(
                &infra.into(),
                InfrastructureCommand::RegisterComputeResource {
                    infrastructure_id: infra,
                    spec: ComputeResourceSpec {
                        id: ResourceId::new(),
                        resource_type: ComputeType::VirtualMachine,
                        hostname: Hostname::new(hostname).expect("hostname"),
                        system: SystemArchitecture::new("x86_64-linux").expect("system"),
                        capabilities: ResourceCapabilities::default(),
                    },
                    identity: MessageIdentity::new_from_user("test"),
                },
            )
            .await
            .expect("register");
        last = outcome.last_sequence();
    }
    manager
        .wait_for(last, Duration::from_secs(10))
        .await
        .expect("the model has both machines");

    let table = stdout(&tool(&url, &["topology"]));
    println!("{table}");
    assert!(table.contains("2 machines"), "{table}");
    assert!(
        table.contains("web-01") && table.contains("db-01"),
        "{table}"
    );
    assert!(
        table.contains("hostname") && table.contains("software"),
        "{table}"
    );
    let dot = stdout(&tool(&url, &["topology", "--format", "dot"]));
    assert!(
        dot.starts_with("digraph") || dot.starts_with("graph"),
        "{dot}"
    );
    assert!(dot.contains("web-01"));
    let mermaid = stdout(&tool(&url, &["topology", "--format", "mermaid"]));
    assert!(mermaid.contains("web-01"), "{mermaid}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&tool(&url, &["topology", "--format", "json"])))
            .expect("json");
    assert!(json.to_string().contains("db-01"));
    // One infrastructure: the same two; another: none.
    let one = stdout(&tool(
        &url,
        &["topology", "--infrastructure", &infra.to_string()],
    ));
    assert!(one.contains("2 machines"), "{one}");
    let other = stdout(&tool(
        &url,
        &[
            "topology",
            "--infrastructure",
            &InfrastructureId::new().to_string(),
        ],
    ));
    assert!(other.contains("0 machines"), "{other}");
    let bad = tool(&url, &["topology", "--infrastructure", "not-a-uuid"]);
    assert!(!bad.status.success());
    manager.shutdown().await.expect("shutdown");
}
