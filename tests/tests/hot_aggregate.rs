//! One hot aggregate under concurrency, on a real server: two OS processes of 32 tasks each
//! register machines on ONE infrastructure aggregate at once (each command answered once,
//! versions gap-free, nothing doubled, each refusal reported to its caller), and a server killed
//! (`SIGKILL`) while groups of commands are in flight (every command either stored and answered
//! or failed, never both); and its snapshot, once the state is larger than one message, kept in
//! the object store and loaded back.
//!
//! About 12 s in a debug build on two cores.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cim_domain_infrastructure::{
    InfrastructureAggregate, InfrastructureCommand, InfrastructureEvent, InfrastructureId,
};
use cim_infrastructure_nats::event_store::{EventStoreConfig, JetStreamEventStore};
use cim_nats::jetstream::KvSnapshotStore;
use cim_nats::testing::{wait_until, NatsServer};
use cim_nats::{
    Aggregate, AggregateId, CommandError, EventStore, MessageIdentity, Repository, SnapshotStore,
    StoredEvent,
};

const TASKS: usize = 32;
const COMMANDS: usize = 200;

/// A command's answer, as a worker reported it.
#[derive(Debug, Clone, serde::Deserialize)]
struct Line {
    hostname: String,
    resource: String,
    result: String,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    sequence: u64,
    #[serde(default)]
    error: String,
}

/// The registrations stored on the aggregate: (version, sequence, resource, hostname), checked
/// to be at versions 1..=n with no resource or host name twice.
fn registrations(stored: &[StoredEvent]) -> Vec<(u64, u64, String, String)> {
    let mut resources = HashSet::new();
    let mut hostnames = HashSet::new();
    let rows: Vec<_> = stored
        .iter()
        .map(
            |e| match e.decode::<InfrastructureEvent>().expect("decodes") {
                InfrastructureEvent::ComputeResourceRegistered { resource, .. } => (
                    e.aggregate_version,
                    e.stream_sequence.0,
                    resource.id.to_string(),
                    resource.hostname.as_str().to_owned(),
                ),
                other => panic!("only registrations were sent: {other:?}"),
            },
        )
        .collect();
    for (i, (version, _, resource, hostname)) in rows.iter().enumerate() {
        assert_eq!(*version, i as u64 + 1, "versions are gap-free");
        assert!(
            resources.insert(resource.clone()),
            "{resource} stored twice"
        );
        assert!(
            hostnames.insert(hostname.clone()),
            "{hostname} registered twice"
        );
    }
    rows
}

/// Checks that every answered command is stored once at the version and sequence it was told,
/// and that every command answered otherwise is not stored.
fn check_answers(lines: &[Line], rows: &[(u64, u64, String, String)]) {
    let by_resource: HashMap<&str, (u64, u64)> = rows
        .iter()
        .map(|(v, s, r, _)| (r.as_str(), (*v, *s)))
        .collect();
    let mut ok = 0;
    for line in lines {
        let stored = by_resource.get(line.resource.as_str());
        if line.result == "ok" {
            ok += 1;
            assert_eq!(
                stored,
                Some(&(line.version, line.sequence)),
                "{} answered at version {} / sequence {}",
                line.hostname,
                line.version,
                line.sequence
            );
        } else {
            assert_eq!(
                stored, None,
                "{} failed ({}), yet stored",
                line.hostname, line.error
            );
        }
    }
    assert_eq!(
        ok,
        rows.len(),
        "every stored event was answered to its caller"
    );
}

fn worker(
    url: &str,
    infra: InfrastructureId,
    n: usize,
    out: &std::path::Path,
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_hot-aggregate-worker"))
        .args([
            url.to_owned(),
            infra.to_string(),
            n.to_string(),
            TASKS.to_string(),
            COMMANDS.to_string(),
            out.display().to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_of_32_tasks_on_one_aggregate_answer_every_command_once() {
    let (server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), EventStoreConfig::default())
        .await
        .expect("store");
    let infra = InfrastructureId::new();
    let dir = tempfile::tempdir().expect("dir");
    let outs: Vec<_> = (0..2)
        .map(|n| dir.path().join(format!("worker-{n}.jsonl")))
        .collect();
    let mut children: Vec<_> = outs
        .iter()
        .enumerate()
        .map(|(n, out)| worker(&server.url(), infra, n, out))
        .collect();
    for child in &mut children {
        let stdout = child.stdout.take().expect("stdout");
        let ready = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .expect("read")
        .expect("a worker's first line");
        assert_eq!(ready.trim(), "ready", "a worker failed to start");
    }
    let started = Instant::now();
    client.publish("hot.go", "".into()).await.expect("go");
    client.flush().await.expect("flush");
    let statuses = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(240);
        children
            .into_iter()
            .map(|mut child| loop {
                if let Some(status) = child.try_wait().expect("wait") {
                    return status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("a worker did not finish in 240 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("workers");
    let elapsed = started.elapsed();
    assert!(
        statuses.iter().all(|s| s.success()),
        "workers: {statuses:?}"
    );

    let lines: Vec<Line> = outs
        .iter()
        .flat_map(|out| {
            std::fs::read_to_string(out)
                .expect("a worker's answers")
                .lines()
                .map(|l| serde_json::from_str::<Line>(l).expect("a line"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        lines.len(),
        2 * TASKS * COMMANDS,
        "every command answered once"
    );
    let errors: Vec<_> = lines.iter().filter(|l| l.result == "error").collect();
    assert!(
        errors.is_empty(),
        "commands failed: {:?}",
        &errors[..errors.len().min(5)]
    );

    let stored = store.read_aggregate(&infra.into(), 0).await.expect("read");
    let rows = registrations(&stored);
    check_answers(&lines, &rows);
    // A shared host name was asked for by both processes: one got it, the other was told.
    let mut shared: HashMap<&str, Vec<&str>> = HashMap::new();
    for line in lines.iter().filter(|l| l.hostname.starts_with("shared-")) {
        shared.entry(&line.hostname).or_default().push(&line.result);
    }
    assert_eq!(shared.len(), TASKS * COMMANDS / 10);
    for (hostname, mut results) in shared {
        results.sort_unstable();
        assert_eq!(results, ["ok", "rejected"], "{hostname}");
    }
    for line in lines.iter().filter(|l| l.result == "rejected") {
        assert!(
            line.error.contains(&line.hostname),
            "{}: {}",
            line.hostname,
            line.error
        );
    }
    println!(
        "two processes x {TASKS} tasks x {COMMANDS} commands on one aggregate: {} stored, {} refused, {:.1} s ({:.0} commands/s, debug build)",
        rows.len(),
        lines.len() - rows.len(),
        elapsed.as_secs_f64(),
        lines.len() as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_group_leaves_each_command_stored_and_answered_or_failed() {
    const PER_TASK: usize = 100;
    let mut server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let client = server.connect().await.expect("connect");
    let store = Arc::new(
        JetStreamEventStore::new(client.clone(), EventStoreConfig::default())
            .await
            .expect("store"),
    );
    let repo = Arc::new(
        Repository::<InfrastructureAggregate>::new(Arc::clone(&store))
            .with_outcome_deadline(Duration::from_secs(60)),
    );
    let infra = InfrastructureId::new();
    let id: AggregateId = infra.into();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let (repo, id, answered) = (Arc::clone(&repo), id.clone(), Arc::clone(&answered));
        tasks.spawn(async move {
            let mut lines = Vec::new();
            for k in 0..PER_TASK {
                let hostname = format!("k-{task}-{k}");
                let spec = support::infra::spec(&hostname);
                let resource = spec.id.to_string();
                let command = InfrastructureCommand::RegisterComputeResource {
                    infrastructure_id: infra,
                    spec,
                    identity: MessageIdentity::new_from_user("ops"),
                };
                let sent = Instant::now();
                let line = match repo.execute(&id, command).await {
                    Ok(outcome) => Line {
                        hostname,
                        resource,
                        result: "ok".into(),
                        version: outcome.version,
                        sequence: outcome.last_sequence().0,
                        error: String::new(),
                    },
                    Err(e) => Line {
                        hostname,
                        resource,
                        result: if matches!(e, CommandError::Rejected(_)) {
                            "rejected"
                        } else {
                            "error"
                        }
                        .into(),
                        version: 0,
                        sequence: 0,
                        error: e.to_string(),
                    },
                };
                answered.fetch_add(1, Ordering::Relaxed);
                lines.push((line, sent, Instant::now()));
            }
            lines
        });
    }
    let total = TASKS * PER_TASK;
    let kill_at = total / 3;
    wait_until(
        Duration::from_secs(120),
        "a third of the commands answered",
        || {
            let n = answered.load(Ordering::Relaxed);
            async move { n >= kill_at }
        },
    )
    .await;
    // Pause the server (SIGSTOP) until no command is answered any more: an append is then
    // surely on its way, unanswered. Kill it there (SIGKILL), and restart it on the same store.
    let pid = server.pid().expect("running").to_string();
    let paused = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill -STOP");
    assert!(paused.success(), "the server could not be paused");
    let mut before = answered.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = answered.load(Ordering::Relaxed);
        if now == before {
            break;
        }
        before = now;
    }
    let in_flight_at_kill = total - before;
    let killed = Instant::now();
    let mut server = tokio::task::spawn_blocking(move || {
        server.kill();
        // Down long enough that what was in flight is lost with the connection.
        std::thread::sleep(Duration::from_millis(500));
        server
            .restart()
            .expect("restart on the same port and store");
        server
    })
    .await
    .expect("kill and restart");
    let down = killed.elapsed();
    let back = Instant::now();
    let mut timed = Vec::new();
    while let Some(done) = tasks.join_next().await {
        timed.extend(done.expect("task"));
    }
    // Commands sent before the pause and answered after the restart: in flight across the kill.
    let across = timed
        .iter()
        .filter(|(_, sent, done)| *sent < killed && *done > back)
        .count();
    assert!(
        in_flight_at_kill > 0 && across > 0,
        "no command was in flight across the kill: it tested nothing"
    );
    let lines: Vec<Line> = timed.into_iter().map(|(line, _, _)| line).collect();
    assert_eq!(lines.len(), total, "every command answered once");

    let stored = store.read_aggregate(&id, 0).await.expect("read");
    let rows = registrations(&stored);
    check_answers(&lines, &rows);
    let failed: Vec<_> = lines.iter().filter(|l| l.result != "ok").collect();
    println!(
        "server paused and killed with {} of {total} commands unanswered ({across} in flight across it), back after {} ms: {} stored and answered, {} failed ({:?})",
        in_flight_at_kill,
        down.as_millis(),
        rows.len(),
        failed.len(),
        failed.iter().map(|l| &l.error).take(3).collect::<Vec<_>>()
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_larger_than_one_message_is_snapshotted_in_the_object_store_and_loaded_back() {
    const MACHINES: usize = 5_000;
    let (_server, client) = support::server().await;
    let store = Arc::new(
        JetStreamEventStore::new(client.clone(), EventStoreConfig::default())
            .await
            .expect("store"),
    );
    let snapshots = Arc::new(
        KvSnapshotStore::new(client.clone(), "INFRA_SNAPSHOTS")
            .await
            .expect("bucket"),
    );
    let repo = Arc::new(
        Repository::<InfrastructureAggregate>::new(Arc::clone(&store))
            .with_snapshots(Arc::clone(&snapshots) as Arc<dyn SnapshotStore>, 1_000),
    );
    let infra = InfrastructureId::new();
    let id: AggregateId = infra.into();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let (repo, id) = (Arc::clone(&repo), id.clone());
        tasks.spawn(async move {
            for k in (task..MACHINES).step_by(TASKS) {
                let command = InfrastructureCommand::RegisterComputeResource {
                    infrastructure_id: infra,
                    spec: support::infra::spec(&format!("machine-{k:05}.dc1.example.com")),
                    identity: MessageIdentity::new_from_user("discovery"),
                };
                repo.execute(&id, command).await.expect("registered");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }

    let snapshot = snapshots
        .load(InfrastructureAggregate::TYPE, &id)
        .await
        .expect("load")
        .expect("a snapshot");
    assert_eq!(snapshot.version, MACHINES as u64);
    let max_payload = client.server_info().max_payload;
    assert!(
        snapshot.state.len() > max_payload,
        "{} bytes of state: not over the server's {max_payload}",
        snapshot.state.len()
    );
    // The key holds where the snapshot is, in a form any client can follow.
    let key = format!("{}.r.{id}", InfrastructureAggregate::TYPE);
    let js = async_nats::jetstream::new(client.clone());
    let raw = js
        .get_key_value("INFRA_SNAPSHOTS")
        .await
        .expect("bucket")
        .get(&key)
        .await
        .expect("get")
        .expect("a value");
    let reference: serde_json::Value = serde_json::from_slice(&raw).expect("json");
    assert_eq!(reference["object_store"], "INFRA_SNAPSHOTS_LARGE");
    assert_eq!(reference["object"], key.as_str());
    assert_eq!(reference["version"], MACHINES as u64);

    // Another repository (another process) starts from it, and agrees with a full load.
    let fresh = Repository::<InfrastructureAggregate>::new(Arc::clone(&store))
        .with_snapshots(Arc::clone(&snapshots) as Arc<dyn SnapshotStore>, 1_000);
    let from_snapshot = fresh.load(&id).await.expect("load");
    let full = Repository::<InfrastructureAggregate>::new(Arc::clone(&store))
        .load(&id)
        .await
        .expect("full load");
    assert_eq!(from_snapshot.version, MACHINES as u64);
    assert_eq!(
        serde_json::to_value(&from_snapshot.state).unwrap(),
        serde_json::to_value(&full.state).unwrap()
    );
    // The new state after a command is the snapshot's plus that command.
    let outcome = fresh
        .execute(
            &id,
            InfrastructureCommand::RegisterComputeResource {
                infrastructure_id: infra,
                spec: support::infra::spec("machine-00000.dc1.example.com"),
                identity: MessageIdentity::new_from_user("discovery"),
            },
        )
        .await;
    assert!(
        matches!(outcome, Err(CommandError::Rejected(_))),
        "the host name is known from the snapshot: {outcome:?}"
    );

    // A missing object is a missing snapshot: the aggregate loads from its events.
    js.get_object_store("INFRA_SNAPSHOTS_LARGE")
        .await
        .expect("object store")
        .delete(&key)
        .await
        .expect("delete");
    assert!(snapshots
        .load(InfrastructureAggregate::TYPE, &id)
        .await
        .expect("load")
        .is_none());
    assert_eq!(
        fresh.load(&id).await.expect("load").version,
        MACHINES as u64
    );
}
