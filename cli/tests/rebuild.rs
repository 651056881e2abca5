//! `cim-nats projection rebuild NAME`, the built binary against a real server with the read
//! model's runner running in this process: `--yes` needed off a terminal, a plain line when no
//! runner runs, progress lines and the final line, JSON lines, and a rebuild that makes no
//! progress reported as such.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use cim_nats::jetstream::{
    KeyedProjection, Pointer, ReadModelHandle, ReadModelOptions, ReadModelRunner, Rows,
};
use cim_nats::testing::TestStore;
use cim_nats::{
    AggregateId, Envelope, EventId, EventStoreExt, ExpectedVersion, NatsEvent, ProjectionError,
    StreamSequence,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "bank", aggregate = "account")]
enum AccountEvent {
    #[nats_event(operation = "deposited")]
    Deposited {
        #[nats_event(event_id)]
        id: EventId,
        amount: u64,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Balance {
    balance: u64,
    deposits: u64,
}

/// Balances per account. Events whose sequence is in the held range wait until it is lifted.
struct Balances {
    hold: watch::Receiver<Option<(u64, u64)>>,
}

#[async_trait]
impl KeyedProjection for Balances {
    type Event = AccountEvent;
    type Row = Balance;
    const NAME: &'static str = "Balances";

    async fn apply(
        &self,
        event: &Envelope<AccountEvent>,
        rows: &mut Rows<'_, Balance>,
    ) -> Result<(), ProjectionError> {
        let sequence = event.sequence().0;
        let held =
            |h: &Option<(u64, u64)>| h.is_some_and(|(lo, hi)| lo < sequence && sequence <= hi);
        let mut hold = self.hold.clone();
        if held(&hold.borrow()) {
            let _ = hold.wait_for(|h| !held(h)).await;
        }
        let id = event.aggregate_id().to_string();
        let mut row = rows.get("account", &id).await?.unwrap_or_default();
        let AccountEvent::Deposited { amount, .. } = &event.event;
        row.balance += amount;
        row.deposits += 1;
        rows.put("account", &id, row)
    }
}

/// Stores `events` deposits on 50 accounts, 100 per append; the last sequence.
async fn fill(test: &TestStore, events: usize) -> StreamSequence {
    let mut last = StreamSequence(0);
    let mut left = events;
    let mut i = 0;
    while left > 0 {
        let n = left.min(100);
        let deposits: Vec<AccountEvent> = (0..n)
            .map(|k| AccountEvent::Deposited {
                id: EventId::unassigned(),
                amount: k as u64 + 1,
            })
            .collect();
        let id = AggregateId::new(format!("acc-{}", i % 50)).expect("id");
        let appended = test
            .store
            .append_events(&id, ExpectedVersion::Any, &deposits, None)
            .await
            .expect("append");
        last = last.max(appended.last_sequence().expect("a sequence"));
        left -= n;
        i += 1;
    }
    last
}

async fn runner(
    test: &TestStore,
    hold: watch::Receiver<Option<(u64, u64)>>,
    last: StreamSequence,
) -> ReadModelHandle<Balances> {
    let options = ReadModelOptions {
        commit_every: 200,
        retire_after: Duration::from_millis(200),
        ..ReadModelOptions::default()
    };
    let handle = ReadModelRunner::start(&test.store, Balances { hold }, options)
        .await
        .expect("runner");
    handle
        .wait_for(last, Duration::from_secs(30))
        .await
        .expect("caught up");
    handle
}

/// Runs the tool (stdin not a terminal, output captured) without holding up the runtime.
async fn cli(url: &str, args: &[&str]) -> Output {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_cim-nats"))
            .arg("--server")
            .arg(url)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run cim-nats")
    })
    .await
    .expect("the tool's thread")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn pointer(test: &TestStore) -> Pointer {
    let value = async_nats::jetstream::new(test.client.clone())
        .get_key_value("READ_MODELS")
        .await
        .expect("pointers")
        .get("Balances")
        .await
        .expect("get")
        .expect("a pointer");
    serde_json::from_slice(&value).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_asks_for_yes_off_a_terminal_and_says_when_no_runner_runs() {
    let test = TestStore::start("bank").await.expect("fixture");
    let url = test.server.url();
    let unasked = cli(&url, &["projection", "rebuild", "Balances"]).await;
    assert!(!unasked.status.success());
    assert_eq!(
        text(&unasked.stderr).trim(),
        "cim-nats: not on a terminal: pass --yes to rebuild read model Balances"
    );
    let none = cli(&url, &["projection", "rebuild", "Balances", "--yes"]).await;
    assert!(!none.status.success());
    assert_eq!(
        text(&none.stderr).trim(),
        "cim-nats: no runner of read model Balances is running (nothing answers on \
         _CIM.rebuild.READ_MODELS.Balances): start the service that runs it"
    );
    assert!(none.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_shows_progress_until_readers_switched_as_text_and_json() {
    let test = TestStore::start("bank").await.expect("fixture");
    let url = test.server.url();
    let last = fill(&test, 4000).await;
    let (hold, hold_rx) = watch::channel(None);
    let handle = runner(&test, hold_rx, last).await;

    // Text: progress lines on standard error, the outcome on standard output.
    let plain = cli(&url, &["projection", "rebuild", "Balances", "--yes"]).await;
    let (out, err) = (text(&plain.stdout), text(&plain.stderr));
    assert!(plain.status.success(), "{err}");
    let progress: Vec<&str> = err.lines().collect();
    assert!(!progress.is_empty(), "no progress line");
    for line in &progress {
        let rest = line
            .strip_prefix("rebuilding Balances: ")
            .unwrap_or_else(|| panic!("{line}"));
        let (counts, rest) = rest.split_once(" events (").expect(line);
        let (position, target) = counts.split_once('/').expect(line);
        assert!(position.parse::<u64>().is_ok(), "{line}");
        assert_eq!(target.parse::<u64>().ok(), Some(last.0), "{line}");
        assert!(
            rest.contains("%), ") && rest.contains(" events/s, ETA "),
            "{line}"
        );
    }
    let done = out.trim();
    let rest = done
        .strip_prefix("Balances rebuilt into RM_Balances_V1_G1: ")
        .unwrap_or_else(|| panic!("{done}"));
    let (events, rest) = rest.split_once(" events in ").expect(done);
    assert!(events.parse::<u64>().expect(done) >= last.0, "{done}");
    assert!(rest.ends_with(" events/s); readers switched"), "{done}");
    println!("{err}{out}");
    assert_eq!(pointer(&test).await.bucket, "RM_Balances_V1_G1");

    // JSON lines: the answer, progress, the outcome.
    let json = cli(
        &url,
        &["projection", "rebuild", "Balances", "--yes", "--json"],
    )
    .await;
    assert!(json.status.success(), "{}", text(&json.stderr));
    let lines: Vec<Value> = text(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let answer = &lines[0];
    assert_eq!(answer["type"], "answer");
    assert_eq!(answer["accepted"], true);
    assert_eq!(answer["bucket"], "RM_Balances_V1_G2");
    assert_eq!(answer["live"], "RM_Balances_V1_G1");
    assert_eq!(answer["generation"], 2);
    let target = answer["target"].as_u64().expect("target");
    let progress: Vec<&Value> = lines.iter().filter(|l| l["type"] == "progress").collect();
    assert!(!progress.is_empty());
    for p in &progress {
        assert_eq!(p["target"], target);
        assert!(p["position"].as_u64().is_some() && p["percent"].as_u64().is_some());
    }
    let done = lines.last().expect("lines");
    assert_eq!(done["type"], "done");
    assert_eq!(done["bucket"], "RM_Balances_V1_G2");
    assert_eq!(done["switched"], true);
    assert!(done["events"].as_u64().expect("events") >= target);
    assert_eq!(handle.bucket(), "RM_Balances_V1_G2");

    // A rebuild held half-way makes no progress: said so once --timeout has passed.
    hold.send_replace(Some((last.0 / 2, last.0)));
    let stalled = cli(
        &url,
        &[
            "--timeout",
            "2",
            "projection",
            "rebuild",
            "Balances",
            "--yes",
        ],
    )
    .await;
    assert!(!stalled.status.success());
    let err = text(&stalled.stderr);
    let last_line = err.lines().last().unwrap_or_default();
    assert!(
        last_line.starts_with("cim-nats: the rebuild of Balances made no progress for 2 s"),
        "{err}"
    );
    hold.send_replace(None);
    handle.shutdown().await.expect("clean stop");
}

/// A rebuild of `CIM_REBUILD_EVENTS` events (2,000 by default; `cargo xtask soak` runs it with
/// 50,000, the README's figures) from start to the switch, its lines printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_of_many_events_reaches_every_event() {
    let events: usize = std::env::var("CIM_REBUILD_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let test = TestStore::start("bank").await.expect("fixture");
    let last = fill(&test, events).await;
    let handle = runner(&test, watch::channel(None).1, last).await;
    let run = cli(
        &test.server.url(),
        &["projection", "rebuild", "Balances", "--yes"],
    )
    .await;
    print!("{}{}", text(&run.stderr), text(&run.stdout));
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).starts_with(&format!(
            "Balances rebuilt into RM_Balances_V1_G1: {} events in ",
            last.0
        )),
        "{}",
        text(&run.stdout)
    );
    handle.shutdown().await.expect("clean stop");
}
