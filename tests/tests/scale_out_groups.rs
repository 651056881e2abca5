//! Consumer groups of separate member processes (`group-member`), against a real nats-server:
//! 3 members share 16 partitions while events are stored; one member is killed with SIGKILL at
//! a seeded random point and started again, a fourth joins half-way, one leaves gracefully near
//! the end. Reports duplicates, take-over times (from the kill to each of its partitions held
//! by another member) and the rebalance time.
//!
//! - A subscriber group, checked from the log each member writes: every event handled;
//!   per aggregate, each lease epoch handles consecutive versions in order, an epoch starts no
//!   later than right after what earlier epochs handled, and never while an earlier epoch of its
//!   partition still handles that aggregate; every event handled twice is marked as a redelivery
//!   and was first handled by the killed member (nothing a graceful member acknowledged comes
//!   again).
//! - A per-key read model group (`balances`, one row per account): after the kills, every row
//!   exact (balance, event count, last version: the model refuses a version out of order).
//!
//! `SCALE_OUT_EVENTS` sets the event count (default 20,000 on 1,000 aggregates; `cargo xtask
//! soak` runs 100,000); `SCALE_OUT_SEED` the seed of the kill point.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cim_nats::jetstream::group::{GroupStatus, GROUPS_BUCKET};
use cim_nats::jetstream::{JetStreamEventStore, ReadModel, ReadModelOptions, StoreConfig};
use cim_nats::{AggregateId, Repository};
use futures::StreamExt;
use support::balances::AccountRow;
use support::bank::{Account, AccountCommand};

const PARTITIONS: u32 = 16;
const AGGREGATES: usize = 1_000;

/// A member process.
struct Member {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Member {
    fn spawn(url: &str, group: &str, mode: &str, name: &str, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_group-member"))
            .args([
                url,
                group,
                name,
                &PARTITIONS.to_string(),
                mode,
                log.to_str().expect("path"),
            ])
            .env(
                "RUST_LOG",
                std::env::var("MEMBER_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn group-member");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        match lines.next() {
            Some(Ok(line)) if line == "joined" => {}
            other => panic!("member {name} did not join: {other:?}"),
        }
        // Keep draining its output.
        std::thread::spawn(move || for _ in lines {});
        Self {
            name: name.to_owned(),
            child,
            stdin,
            log,
        }
    }

    /// SIGKILL.
    fn kill(&mut self) {
        self.child.kill().expect("kill");
        let _ = self.child.wait();
    }

    /// Asks it to leave gracefully and waits for it to exit.
    fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "stop");
        }
        let status = self.child.wait().expect("wait");
        assert!(
            status.success(),
            "member {} exited with {status}",
            self.name
        );
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One line of a member's log.
#[derive(Debug, Clone)]
struct Handled {
    at: u128,
    aggregate: String,
    version: u64,
    delivered: u64,
    partition: u32,
    epoch: u64,
    member: String,
}

fn read_log(member: &str, path: &Path) -> Vec<Handled> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() != 7 {
                return None; // a line cut by the kill
            }
            Some(Handled {
                at: f[0].parse().ok()?,
                aggregate: f[1].to_owned(),
                version: f[2].parse().ok()?,
                delivered: f[4].parse().ok()?,
                partition: f[5].parse().ok()?,
                epoch: f[6].parse().ok()?,
                member: member.to_owned(),
            })
        })
        .collect()
}

fn count_lines(paths: &[(String, PathBuf)]) -> usize {
    paths
        .iter()
        .map(|(_, p)| {
            std::fs::read(p)
                .map(|b| b.iter().filter(|&&c| c == b'\n').count())
                .unwrap_or(0)
        })
        .sum()
}

/// xorshift64*, for a reproducible kill point.
fn seeded(seed: u64, bound: u64) -> u64 {
    let mut x = seed.max(1);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
}

async fn status(client: &async_nats::Client, group: &str) -> GroupStatus {
    GroupStatus::read(client, GROUPS_BUCKET, group)
        .await
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What a scenario run measured, and where its members logged.
struct Run {
    _server: cim_nats::testing::NatsServer,
    client: async_nats::Client,
    store: JetStreamEventStore,
    total: usize,
    rounds: u64,
    /// Every member's name and log, the gone ones included.
    logs: Vec<(String, PathBuf)>,
    takeover: Vec<Duration>,
    first_balance: Duration,
    rebalance: Duration,
    leave: Duration,
    started: Instant,
    _dir: tempfile::TempDir,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits until the 16 partitions are shared by `members`, each holding its fair share.
async fn wait_balanced(client: &async_nats::Client, group: &str, members: &[&str]) -> Duration {
    let since = Instant::now();
    let share = PARTITIONS as usize / members.len();
    loop {
        let s = status(client, group).await;
        if s.members.len() == members.len()
            && s.leases.len() == PARTITIONS as usize
            && members
                .iter()
                .all(|m| (share..=share + 1).contains(&s.held_by(m).len()))
        {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "{members:?} not sharing the partitions after 30 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the scenario for group `group` of `mode` members: 3 members, events stored
/// meanwhile, m2 killed (SIGKILL) at a seeded point and restarted, m4 joining half-way, m1
/// leaving gracefully at 80%. Progress is counted in handled events (`subscriber`, from the
/// logs) or stored events (`read-model`).
async fn scenario(mode: &str, group: &str) -> Run {
    let rounds = env_or("SCALE_OUT_EVENTS", 20_000usize).div_ceil(AGGREGATES) as u64;
    let total = rounds as usize * AGGREGATES;
    let seed: u64 = env_or(
        "SCALE_OUT_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    let (server, client) = support::server().await;
    let url = server.url();
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .expect("store");
    // Cached: each command reads only what its aggregate got since (not its whole history).
    let repo = Arc::new(Repository::<Account>::new(store.clone()).with_cache(AGGREGATES));
    let dir = tempfile::tempdir().expect("dir");

    let started = Instant::now();
    let spawn = |name: &str| Member::spawn(&url, group, mode, name, dir.path());
    let mut members = vec![spawn("m1"), spawn("m2"), spawn("m3")];
    // The first member takes every partition, then hands the others' shares over.
    let first_balance = wait_balanced(&client, group, &["m1", "m2", "m3"]).await;

    // Events are stored while the group works: round r is version r+1 of every aggregate.
    let stored = Arc::new(AtomicU64::new(0));
    let writer = {
        let repo = Arc::clone(&repo);
        let stored = Arc::clone(&stored);
        tokio::spawn(async move {
            for round in 0..rounds {
                futures::stream::iter(0..AGGREGATES)
                    .map(|i| {
                        let repo = Arc::clone(&repo);
                        async move {
                            let id = AggregateId::new(format!("acc-{i}")).expect("id");
                            let command = if round == 0 {
                                AccountCommand::Open {
                                    owner: format!("owner {i}"),
                                }
                            } else {
                                AccountCommand::Deposit(round)
                            };
                            repo.execute(&id, command).await.expect("command");
                        }
                    })
                    .buffer_unordered(64)
                    .for_each(|()| {
                        stored.fetch_add(1, Ordering::Relaxed);
                        async {}
                    })
                    .await;
            }
        })
    };

    let mut gone: Vec<(String, PathBuf)> = Vec::new();
    let logs = |members: &[Member], gone: &[(String, PathBuf)]| -> Vec<(String, PathBuf)> {
        members
            .iter()
            .map(|m| (m.name.clone(), m.log.clone()))
            .chain(gone.iter().cloned())
            .collect()
    };
    let progress = |members: &[Member], gone: &[(String, PathBuf)]| -> usize {
        if mode == "subscriber" {
            count_lines(&logs(members, gone))
        } else {
            stored.load(Ordering::Relaxed) as usize
        }
    };
    // 150 s per 20,000 events (the soak runs 100,000).
    let deadline = Instant::now() + Duration::from_secs(150 * (total as u64).div_ceil(20_000));
    let wait_progress = |at: usize, what: &str, members: &[Member], gone: &[(String, PathBuf)]| {
        let reached = progress(members, gone) >= at;
        assert!(
            reached || Instant::now() < deadline,
            "the group stalled before {what}"
        );
        reached
    };

    // The kill: between 15% and 45% of the events.
    let kill_at = total * 15 / 100 + seeded(seed, (total * 30 / 100) as u64) as usize;
    println!("{group}: seed {seed}: member m2 is killed after {kill_at} events");
    while !wait_progress(kill_at, "the kill", &members, &gone) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim_partitions = status(&client, group).await.held_by("m2");
    let mut victim = members.remove(1);
    let killed = Instant::now();
    victim.kill();
    gone.push((victim.name.clone(), victim.log.clone()));
    drop(victim);
    // Each of its partitions taken over by a live member: when.
    let mut takeover: BTreeMap<u32, Duration> = BTreeMap::new();
    while takeover.len() < victim_partitions.len() {
        let s = status(&client, group).await;
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "partitions {victim_partitions:?} not taken over in 30 s: {s:?}"
        );
        for lease in &s.leases {
            if victim_partitions.contains(&lease.partition) && lease.member != "m2" {
                takeover
                    .entry(lease.partition)
                    .or_insert_with(|| killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Restarted (a new process, a new member).
    members.push(spawn("m2-restarted"));

    // A fourth member joins half-way.
    while !wait_progress(total / 2, "the join", &members, &gone) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let joined = Instant::now();
    members.push(spawn("m4"));
    wait_balanced(&client, group, &["m1", "m3", "m2-restarted", "m4"]).await;
    let rebalance = joined.elapsed();

    // One member leaves gracefully at 80%.
    while !wait_progress(total * 8 / 10, "the leave", &members, &gone) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut leaving = members.remove(0);
    let leave_started = Instant::now();
    leaving.stop();
    let leave = leave_started.elapsed();
    gone.push((leaving.name.clone(), leaving.log.clone()));
    drop(leaving);

    writer.await.expect("writer");
    assert_eq!(stored.load(Ordering::Relaxed) as usize, total);
    let all_logs = logs(&members, &gone);
    if mode == "subscriber" {
        // Every event handled before the members stop.
        while Instant::now() < deadline && count_lines(&all_logs) < total {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        let model =
            ReadModel::<AccountRow>::open(client.clone(), "balances", &ReadModelOptions::default())
                .await
                .expect("model");
        let last = cim_nats::EventStore::last_sequence(&store)
            .await
            .expect("last");
        model
            .wait_for(last, Duration::from_secs(60))
            .await
            .expect("the model reaches the last event");
    }
    for mut m in members.drain(..) {
        m.stop();
    }
    let mut takeover: Vec<Duration> = takeover.into_values().collect();
    takeover.sort();
    Run {
        _server: server,
        client,
        store,
        total,
        rounds,
        logs: all_logs,
        takeover,
        first_balance,
        rebalance,
        leave,
        started,
        _dir: dir,
    }
}

impl Run {
    fn report(&self, what: &str, duplicates: usize) {
        println!(
            "scale_out {what}: {} events on {AGGREGATES} aggregates, {duplicates} duplicates; \
             take-over of {} partitions after SIGKILL: p50 {:?}, max {:?}; rebalance on join: \
             {:?} (first balance of 3: {:?}); graceful leave: {:?}; whole run {:?}",
            self.total,
            self.takeover.len(),
            percentile(&self.takeover, 0.5),
            percentile(&self.takeover, 1.0),
            self.rebalance,
            self.first_balance,
            self.leave,
            self.started.elapsed()
        );
        assert!(
            percentile(&self.takeover, 1.0) <= Duration::from_secs(10),
            "take-over took {:?}",
            percentile(&self.takeover, 1.0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_subscriber_group_survives_a_kill_a_join_and_a_leave_in_order() {
    let run = scenario("subscriber", "audit").await;
    let (total, rounds) = (run.total, run.rounds);
    let mut lines: Vec<Handled> = run.logs.iter().flat_map(|(m, p)| read_log(m, p)).collect();
    let seen: HashSet<(&str, u64)> = lines
        .iter()
        .map(|h| (h.aggregate.as_str(), h.version))
        .collect();
    assert_eq!(
        seen.len(),
        total,
        "events not handled: {}",
        total - seen.len()
    );

    // The order, per aggregate: by epoch, consecutive versions, no gap, no overlap in time.
    lines.sort_by_key(|h| h.at);
    let mut by_aggregate: HashMap<String, Vec<Handled>> = HashMap::new();
    for h in &lines {
        by_aggregate
            .entry(h.aggregate.clone())
            .or_default()
            .push(h.clone());
    }
    let mut duplicates = 0usize;
    for (aggregate, handled) in &by_aggregate {
        let partition = handled[0].partition;
        assert!(
            handled.iter().all(|h| h.partition == partition),
            "{aggregate} in two partitions"
        );
        let mut epochs: BTreeMap<u64, Vec<&Handled>> = BTreeMap::new();
        for h in handled {
            epochs.entry(h.epoch).or_default().push(h);
        }
        let mut max_before = 0u64;
        let mut first_handler: HashMap<u64, &str> = HashMap::new();
        let mut last_at_before = 0u128;
        for (epoch, lines) in &epochs {
            let first_at = lines.iter().map(|h| h.at).min().unwrap_or(0);
            assert!(
                first_at > last_at_before,
                "{aggregate}: epoch {epoch} handled it while an earlier epoch still did"
            );
            last_at_before = lines.iter().map(|h| h.at).max().unwrap_or(0);
            let start = lines[0].version;
            assert!(
                start <= max_before + 1,
                "{aggregate}: epoch {epoch} starts at version {start} after {max_before}: a gap"
            );
            for pair in lines.windows(2) {
                assert_eq!(
                    pair[1].version,
                    pair[0].version + 1,
                    "{aggregate}: epoch {epoch} handled version {} after {}",
                    pair[1].version,
                    pair[0].version
                );
            }
            for h in lines {
                match first_handler.get(&h.version) {
                    None => {
                        first_handler.insert(h.version, &h.member);
                    }
                    Some(first) => {
                        duplicates += 1;
                        assert!(
                            h.delivered >= 2,
                            "{aggregate} v{} handled again without being marked a redelivery",
                            h.version
                        );
                        assert_eq!(
                            *first, "m2",
                            "{aggregate} v{} came again after {first} handled it (only the \
                             killed member's unacknowledged events may)",
                            h.version
                        );
                    }
                }
            }
            max_before = max_before.max(lines.iter().map(|h| h.version).max().unwrap_or(0));
        }
        assert_eq!(max_before, rounds, "{aggregate}");
    }
    run.report("subscriber group", duplicates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_read_model_group_keeps_exact_rows_through_a_kill_a_join_and_a_leave() {
    let run = scenario("read-model", "balances").await;
    let model =
        ReadModel::<AccountRow>::open(run.client.clone(), "balances", &ReadModelOptions::default())
            .await
            .expect("model");
    let rounds = run.rounds;
    let expected_balance: u64 = (1..rounds).sum();
    for i in 0..AGGREGATES {
        let row = model
            .get("account", &format!("acc-{i}"))
            .await
            .expect("row")
            .unwrap_or_else(|| panic!("no row for acc-{i}"));
        assert_eq!(
            row,
            AccountRow {
                balance: expected_balance,
                events: rounds,
                version: rounds,
            },
            "acc-{i}"
        );
    }
    // Each partition committed its own checkpoint; the model reflects the whole stream.
    let last = cim_nats::EventStore::last_sequence(&run.store)
        .await
        .expect("last");
    assert!(model.checkpoint().await.expect("checkpoint") >= last);
    run.report("read model group", 0);
}
