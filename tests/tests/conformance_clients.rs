//! The wire format (docs/wire-format.md) kept by clients in other languages, against a real
//! nats-server: a Python (nats-py) and a JavaScript (@nats-io/jetstream) program read every
//! event the Rust side wrote (single appends, an atomic batch, a multi-aggregate append with a
//! check marker) and find no mismatch with the specification; each then appends events as the
//! specification says (a concurrency check, a refused stale expectation, retries recognised, an
//! atomic batch), which the Rust side loads, projects and extends; both readers read the whole
//! stream again. The readers are also shown a stream with foreign messages that break the
//! specification, and must name them.
//!
//! The programs live in `conformance/`; what they need is installed once, pinned, into
//! git-ignored folders (`.tools/conformance/python`, a venv with `conformance/python/
//! requirements.txt`; `conformance/js/node_modules`, `npm ci` from the lock file) and reused.
//! Without python3, node or npm the test fails naming what is missing; `CIM_SKIP_CONFORMANCE=1`
//! skips it.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cim_nats::jetstream::{
    JetStreamEventStore, ReadModel, ReadModelOptions, ReadModelRunner, StoreConfig,
};
use cim_nats::{
    encode_events, AggregateAppend, AggregateId, EventId, EventStoreExt, ExpectedVersion,
    Repository,
};
use serde_json::Value;
use support::balances::{AccountRow, Balances};
use support::bank::{Account, AccountCommand, AccountEvent};

/// The environment variable that skips the test.
const SKIP: &str = "CIM_SKIP_CONFORMANCE";

/// The interpreters of the two programs, installed and ready.
#[derive(Debug, Clone)]
struct Clients {
    python: PathBuf,
    node: PathBuf,
    root: PathBuf,
}

/// The project's root (the workspace holding `conformance/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lies in the workspace")
        .to_path_buf()
}

/// Is `program` runnable (`program --version` succeeds)?
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs an install step; its output is shown when it fails.
fn install_step(what: &str, command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("{what}: cannot run {command:?}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// The venv `.tools/conformance/python` with the pinned requirements, made once: its marker
/// holds the requirements it was made with.
fn python_venv(root: &Path) -> Result<PathBuf, String> {
    let requirements = root.join("conformance/python/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("{}: {e}", requirements.display()))?;
    let venv = root.join(".tools/conformance/python");
    let python = venv.join("bin/python");
    let marker = venv.join(".cim-installed");
    if python.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(&wanted) {
        println!(
            "conformance: reusing {} ({})",
            venv.display(),
            wanted.trim()
        );
        return Ok(python);
    }
    let started = Instant::now();
    install_step(
        "python3 -m venv (Debian/Ubuntu: apt-get install python3-venv)",
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    install_step(
        "pip install -r conformance/python/requirements.txt",
        Command::new(venv.join("bin/pip"))
            .args(["install", "--disable-pip-version-check", "--quiet", "-r"])
            .arg(&requirements),
    )?;
    std::fs::write(&marker, &wanted).map_err(|e| format!("{}: {e}", marker.display()))?;
    println!(
        "conformance: installed {} into {} ({:.1} s)",
        wanted.trim(),
        venv.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(python)
}

/// `conformance/js/node_modules` from the lock file (`npm ci`), made once: its marker holds
/// the lock file it was made from.
fn node_modules(root: &Path) -> Result<(), String> {
    let dir = root.join("conformance/js");
    let lock = std::fs::read_to_string(dir.join("package-lock.json"))
        .map_err(|e| format!("{}: {e}", dir.join("package-lock.json").display()))?;
    let marker = dir.join("node_modules/.cim-installed");
    let installed = |name: &str| dir.join("node_modules").join(name).join("package.json");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(&lock)
        && installed("@nats-io/jetstream").exists()
        && installed("@nats-io/transport-node").exists()
    {
        println!(
            "conformance: reusing {} (npm ci of conformance/js/package-lock.json)",
            dir.join("node_modules").display()
        );
        return Ok(());
    }
    let started = Instant::now();
    install_step(
        "npm ci in conformance/js",
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir),
    )?;
    std::fs::write(&marker, &lock).map_err(|e| format!("{}: {e}", marker.display()))?;
    println!(
        "conformance: installed @nats-io/jetstream 3.4.0 and @nats-io/transport-node 3.4.0 \
         into {} ({:.1} s)",
        dir.join("node_modules").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The clients (`None`: skipped), or why they cannot run.
type Prepared = Result<Option<Clients>, String>;

/// The clients, installed on first use (one install per test process); `None` when skipped.
/// Panics naming what is missing.
fn clients() -> Option<Clients> {
    static READY: OnceLock<Mutex<Option<Prepared>>> = OnceLock::new();
    let mut ready = READY
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let result = ready.get_or_insert_with(|| {
        if std::env::var(SKIP).as_deref() == Ok("1") {
            println!("conformance: skipped ({SKIP}=1): the Python and JavaScript clients did not run");
            return Ok(None);
        }
        let missing: Vec<&str> = ["python3", "node", "npm"]
            .into_iter()
            .filter(|p| !runs(p))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the conformance test needs {} on PATH (python3 with venv and pip, node 18 or later \
                 with npm); install what is missing, or set {SKIP}=1 to skip this test",
                missing.join(", ")
            ));
        }
        let root = root();
        let python = python_venv(&root)?;
        node_modules(&root)?;
        Ok(Some(Clients {
            python,
            node: PathBuf::from("node"),
            root,
        }))
    });
    match result {
        Ok(clients) => clients.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// What one run of a program printed (its JSON) and how it ended.
#[derive(Debug)]
struct Run {
    code: i32,
    json: Value,
}

impl Clients {
    /// Runs `conformance/{python,js}` with `command` against `server` and `domain`.
    async fn run(&self, language: &str, command: &str, server: &str, domain: &str) -> Run {
        let mut cmd = match language {
            "python" => {
                let mut c = Command::new(&self.python);
                c.arg(self.root.join("conformance/python/conformance.py"));
                c
            }
            _ => {
                let mut c = Command::new(&self.node);
                c.arg(self.root.join("conformance/js/conformance.mjs"));
                c
            }
        };
        cmd.args([command, "--server", server, "--domain", domain]);
        let shown = format!("{cmd:?}");
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("{shown}: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "{shown} printed no JSON ({e}, {}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        });
        Run {
            code: output.status.code().unwrap_or(-1),
            json,
        }
    }

    /// Runs both readers; each must find `events` events, `markers` markers and no mismatch.
    async fn read_clean(&self, server: &str, domain: &str, events: u64, markers: u64) {
        for language in ["python", "js"] {
            let run = self.run(language, "read", server, domain).await;
            println!(
                "{language} read {} events, {} markers, {} aggregates, mismatches: {}",
                run.json["count"],
                run.json["markers"],
                run.json["aggregates"],
                run.json["mismatches"]
            );
            assert_eq!(run.code, 0, "{language} reader: {:#}", run.json);
            assert_eq!(run.json["mismatches"], Value::Array(vec![]), "{language}");
            assert_eq!(run.json["count"], events, "{language}: {:#}", run.json);
            assert_eq!(run.json["markers"], markers, "{language}: {:#}", run.json);
        }
    }
}

fn new_id() -> AggregateId {
    AggregateId::from(uuid::Uuid::new_v4())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_read_write_and_rust_extends() {
    let Some(clients) = clients() else { return };
    let started = Instant::now();
    let (server, client) = support::server().await;
    let url = server.url();
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .expect("store");
    let repo = Repository::<Account>::new(store.clone());

    // The Rust side writes: commands through the repository (single appends) ...
    let (ada, bob) = (new_id(), new_id());
    for (id, owner) in [(&ada, "ada"), (&bob, "bob")] {
        repo.execute(
            id,
            AccountCommand::Open {
                owner: owner.into(),
            },
        )
        .await
        .expect("open");
        repo.execute(id, AccountCommand::Deposit(100))
            .await
            .expect("deposit");
    }
    // ... two events of one aggregate in one append (an atomic batch) ...
    let two = store
        .append_events(
            &ada,
            ExpectedVersion::Exact(2),
            &[
                AccountEvent::Deposited {
                    id: EventId::unassigned(),
                    amount: 10,
                },
                AccountEvent::Withdrawn {
                    id: EventId::unassigned(),
                    amount: 30,
                },
            ],
            None,
        )
        .await
        .expect("batch");
    assert_eq!((two.sequences.len(), two.version), (2, 4));
    // ... and a transfer checked against a third account it only reads (a check marker).
    let carol = new_id();
    repo.execute(
        &carol,
        AccountCommand::Open {
            owner: "carol".into(),
        },
    )
    .await
    .expect("open");
    let mut from = [AccountEvent::Withdrawn {
        id: EventId::unassigned(),
        amount: 20,
    }];
    let mut to = [AccountEvent::Deposited {
        id: EventId::unassigned(),
        amount: 20,
    }];
    let parts = vec![
        AggregateAppend::new(
            ada.clone(),
            ExpectedVersion::Exact(4),
            encode_events(&ada, ExpectedVersion::Exact(4), &mut from, None).expect("encode"),
        ),
        AggregateAppend::new(
            bob.clone(),
            ExpectedVersion::Exact(2),
            encode_events(&bob, ExpectedVersion::Exact(2), &mut to, None).expect("encode"),
        ),
        AggregateAppend::check(carol.clone(), ExpectedVersion::Exact(1)),
    ];
    store.append_multi(parts).await.expect("transfer");
    // ada 5 events, bob 3, carol 1; the transfer's two events each carry their own check, so
    // carol's rides on a marker.
    client.flush().await.expect("flush");
    clients.read_clean(&url, "bank", 9, 1).await;

    // Each foreign writer appends to an aggregate of its own, as the specification says.
    let mut foreign = Vec::new();
    for (language, balance) in [("python", 70 + 30 - 25), ("js", 50 + 20 - 15)] {
        let run = clients.run(language, "write", &url, "bank").await;
        println!("{language} wrote: {}", run.json["stored"]);
        assert_eq!(run.code, 0, "{language} writer: {:#}", run.json);
        let stored = run.json["stored"].as_array().expect("stored");
        assert_eq!(stored.len(), 4, "{language}: {:#}", run.json);
        let id = AggregateId::new(run.json["aggregate"].as_str().expect("aggregate")).expect("id");
        foreign.push((language, id, balance));
    }

    // The Rust side loads them ...
    for (language, id, balance) in &foreign {
        let loaded = repo.load(id).await.expect("load");
        assert_eq!(loaded.version, 4, "{language}");
        assert_eq!(loaded.state.balance, *balance, "{language}");
        let owner = if *language == "js" {
            "javascript"
        } else {
            "python"
        };
        assert_eq!(loaded.state.owner.as_deref(), Some(owner));
        let events = store
            .load_events::<AccountEvent>(id, 0)
            .await
            .expect("typed load");
        let versions: Vec<u64> = events.iter().map(|e| e.version()).collect();
        assert_eq!(versions, [1, 2, 3, 4], "{language}");
        // The body's id is the Nats-Msg-Id the foreign writer chose.
        for e in &events {
            let (AccountEvent::Opened { id, .. }
            | AccountEvent::Deposited { id, .. }
            | AccountEvent::Withdrawn { id, .. }) = &e.event;
            assert_eq!(*id, e.stored.event_id, "{language}");
        }
    }
    // ... extends them (the repository's append expects the foreign writer's last sequence) ...
    let mut last = cim_nats::StreamSequence(0);
    for (language, id, balance) in &foreign {
        let outcome = repo
            .execute(id, AccountCommand::Deposit(5))
            .await
            .unwrap_or_else(|e| panic!("{language}: extend: {e}"));
        assert_eq!(outcome.version, 5, "{language}");
        last = last.max(outcome.last_sequence());
        let loaded = repo.load(id).await.expect("load");
        assert_eq!(loaded.state.balance, balance + 5, "{language}");
    }
    // ... and projects every event, foreign ones included, into a KV read model.
    let model = ReadModelRunner::start(&store, Balances, ReadModelOptions::default())
        .await
        .expect("read model");
    model
        .wait_for(last, Duration::from_secs(20))
        .await
        .expect("read model caught up");
    let reader =
        ReadModel::<AccountRow>::open(client.clone(), "balances", &ReadModelOptions::default())
            .await
            .expect("reader");
    let row = |id: &AggregateId| {
        let reader = &reader;
        let id = id.to_string();
        async move {
            reader
                .get("account", &id)
                .await
                .expect("row")
                .expect("a row")
        }
    };
    for (language, id, balance) in &foreign {
        let r = row(id).await;
        assert_eq!((r.balance, r.version), (balance + 5, 5), "{language}");
    }
    assert_eq!(row(&ada).await.balance, 100 + 10 - 30 - 20);
    assert_eq!(row(&bob).await.balance, 100 + 20);
    model.shutdown().await.expect("shutdown");

    // Everything, the foreign events and the Rust side's extensions included, still reads clean
    // in both languages: 9 + 2 × 4 + 2 events.
    clients.read_clean(&url, "bank", 19, 1).await;
    println!(
        "conformance: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The readers are not blind: messages another client stored against the specification are
/// named by their sequences and fail the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readers_name_what_breaks_the_specification() {
    let Some(clients) = clients() else { return };
    let (server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("rogue"))
        .await
        .expect("store");
    // The store made the stream; everything on it is written by hand, as another client would.
    drop(store);
    let js = async_nats::jetstream::new(client.clone());
    let good = |version: u64, aggregate: &str| {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
        h.insert("Cim-Event-Type", "Deposited");
        h.insert("Cim-Event-Version", "1");
        h.insert("Cim-Aggregate-Type", "account");
        h.insert("Cim-Aggregate-Id", aggregate);
        h.insert("Cim-Aggregate-Version", version.to_string().as_str());
        h.insert("Cim-Timestamp", "2026-01-01T00:00:00.000000Z");
        h.insert("Content-Type", "application/json");
        h
    };
    let other = uuid::Uuid::new_v4().to_string();
    let subject = format!("rogue.account.deposited.{other}");
    let mut sent = Vec::new();
    // 1. Correct: version 1.
    sent.push((good(1, &other), "{\"Deposited\":{\"amount\":1}}", None));
    // 2. Version 3 after 1 (a gap).
    sent.push((good(3, &other), "{}", Some("follows version 1")));
    // 3. No headers at all.
    sent.push((
        async_nats::HeaderMap::new(),
        "{}",
        Some("header Nats-Msg-Id is missing"),
    ));
    // 4. A body that is not JSON, a timestamp that is not RFC 3339, an id that is not a UUID.
    let mut bad = good(4, &other);
    bad.insert("Cim-Timestamp", "yesterday");
    bad.insert("Nats-Msg-Id", "42");
    sent.push((bad, "not json", Some("is not RFC 3339")));
    let mut expected = Vec::new();
    for (headers, body, reason) in sent {
        let ack = js
            .publish_with_headers(subject.clone(), headers, body.as_bytes().to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
        if let Some(reason) = reason {
            expected.push((ack.sequence, reason));
        }
    }
    for language in ["python", "js"] {
        let run = clients.run(language, "read", &server.url(), "rogue").await;
        assert_eq!(run.code, 1, "{language}: {:#}", run.json);
        let mismatches = run.json["mismatches"].as_array().expect("mismatches");
        for (sequence, reason) in &expected {
            assert!(
                mismatches.iter().any(|m| m["sequence"] == *sequence
                    && m["reason"].as_str().is_some_and(|r| r.contains(reason))),
                "{language} did not name sequence {sequence} ({reason}): {:#}",
                run.json
            );
        }
        let named: std::collections::BTreeSet<u64> = mismatches
            .iter()
            .filter_map(|m| m["sequence"].as_u64())
            .collect();
        assert!(
            !named.contains(&1),
            "{language} named a good event: {:#}",
            run.json
        );
        assert!(mismatches.iter().any(|m| m["reason"]
            .as_str()
            .is_some_and(|r| r.contains("body is not JSON"))));
        assert!(mismatches.iter().any(|m| m["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Nats-Msg-Id \"42\"") || r.contains("Nats-Msg-Id '42'"))));
    }
}
