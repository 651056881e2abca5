//! The seed's four programs, built as examples, run against servers this test starts: each does
//! what the seed says.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cim_nats::testing::{wait_until, NatsCluster, NatsServer};

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join("examples").join(name);
    assert!(path.is_file(), "{} is not built", path.display());
    path
}

fn run(name: &str, url: &str) -> Output {
    let out = Command::new(example(name))
        .env("NATS_URL", url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn consumers(client: &async_nats::Client) -> usize {
    let js = async_nats::jetstream::new(client.clone());
    match js.get_stream("INFRASTRUCTURE_EVENTS").await {
        Ok(mut s) => s.info().await.map_or(0, |i| i.state.consumer_count),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_programs_do_what_the_seed_says() {
    let server = NatsServer::start().unwrap();
    let url = server.url();
    let client = server.connect().await.unwrap();

    // Publishing: registers a compute resource; twice, two infrastructures.
    run("seed_publishing", &url);
    run("seed_publishing", &url);

    // Subscription: prints compute events as they are stored.
    let mut child = Command::new(example("seed_subscription"))
        .env("NATS_URL", &url)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _child = Killed(child);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_until(
        Duration::from_secs(30),
        "the subscription's consumer",
        || async { consumers(&client).await > 0 },
    )
    .await;
    run("seed_publishing", &url);
    let line = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the subscription printed the new event");
    println!("seed_subscription printed: {line}");
    assert!(
        line.starts_with("Received: ComputeResourceRegistered at 20"),
        "{line}"
    );

    // Projections: the topology of everything stored.
    let out = run("seed_projections", &url);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("seed_projections printed:\n{text}");
    assert!(text.contains("Active compute resources: 3"), "{text}");
    assert!(text.contains("Active networks: 0"), "{text}");
    assert!(text.contains("Active connections: 0"), "{text}");

    // Configuration: three replicas need a cluster, and the program says so on one server.
    let out = run("seed_configuration", &url);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("needs a JetStream cluster"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_configuration_builds_a_store_on_a_three_node_cluster() {
    let cluster = NatsCluster::start(3).unwrap();
    cluster
        .wait_for_jetstream(Duration::from_secs(30))
        .await
        .unwrap();
    let out = run("seed_configuration", &cluster.urls()[0]);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("seed_configuration printed: {text}");
    assert!(
        text.contains("stream INFRASTRUCTURE_EVENTS on [\"infrastructure.>\"] with 3 replicas"),
        "{text}"
    );
}
