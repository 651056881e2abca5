//! The built `cim-nats` binary against a real server: status, events (filtered, followed),
//! one aggregate's history, JSON parsed here, and one-line errors.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use cim_nats::testing::{RawEvent, TestStore};
use serde_json::Value;

fn cli(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cim-nats"))
        .arg("--server")
        .arg(url)
        .args(args)
        .output()
        .expect("run cim-nats")
}

fn json_lines(output: &std::process::Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

async fn account_events(test: &TestStore) {
    let opened = |id: &str| {
        RawEvent::new("bank.account.opened", id, 1)
            .event_type("Opened", 1)
            .header("Cim-Actor", "teller")
            .header("Cim-Correlation-Id", "0193a5a0-0000-7000-8000-000000000001")
            .body(serde_json::json!({ "Opened": { "owner": id } }))
    };
    opened("acc-1").publish(&test.client).await.unwrap();
    opened("acc-2").publish(&test.client).await.unwrap();
    for version in 2..=3 {
        RawEvent::new("bank.account.deposited", "acc-1", version)
            .event_type("Deposited", 1)
            .body(serde_json::json!({ "Deposited": { "amount": version } }))
            .publish(&test.client)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_events_and_an_aggregate_as_json_and_tables() {
    let test = TestStore::start("bank").await.expect("fixture");
    account_events(&test).await;
    let url = test.server.url();
    let js = async_nats::jetstream::new(test.client.clone());
    // A durable consumer, and a read model's pointer and checkpoint as a runner writes them.
    js.get_stream("BANK_EVENTS")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("mailer".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let kv = |bucket: &str| async_nats::jetstream::kv::Config {
        bucket: bucket.to_owned(),
        ..Default::default()
    };
    let pointers = js.create_key_value(kv("READ_MODELS")).await.unwrap();
    let rows = js.create_key_value(kv("RM_balances_V1")).await.unwrap();
    pointers
        .put(
            "balances",
            r#"{"bucket":"RM_balances_V1","version":1}"#.into(),
        )
        .await
        .unwrap();
    rows.put(
        "_cim.checkpoint.0",
        r#"{"name":"balances","version":1,"partition":0,"partitions":1,"stream":"BANK_EVENTS","sequence":3}"#.into(),
    )
    .await
    .unwrap();

    let status = cli(&url, &["status", "--json"]);
    let status = &json_lines(&status)[0];
    let bank = status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "BANK_EVENTS")
        .expect("the bank stream");
    assert_eq!(bank["events"], 4);
    assert_eq!(bank["last_sequence"], 4);
    assert_eq!(bank["consumers"][0]["name"], "mailer");
    assert_eq!(bank["consumers"][0]["pending"], 4);
    let model = &status["read_models"][0];
    assert_eq!(model["name"], "balances");
    assert_eq!(model["checkpoint"], 3);
    assert_eq!(model["lag"], 1, "one event after the checkpoint");
    let table = cli(&url, &["status"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("BANK_EVENTS") && text.contains("mailer") && text.contains("balances"));
    // The read models on their own.
    let models = json_lines(&cli(&url, &["projection", "list", "--json"]));
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["name"], "balances");
    assert_eq!(models[0]["lag"], 1);
    let lag = cli(&url, &["projection", "lag", "balances"]);
    assert!(
        String::from_utf8_lossy(&lag.stdout).contains("checkpoint 3 of stream BANK_EVENTS, lag 1"),
        "{}",
        String::from_utf8_lossy(&lag.stdout)
    );
    let missing = cli(&url, &["projection", "lag", "nothing"]);
    assert!(!missing.status.success());
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim(),
        "cim-nats: no read model nothing in bucket READ_MODELS"
    );

    let events = json_lines(&cli(&url, &["events", "--domain", "bank", "--json"]));
    assert_eq!(events.len(), 4);
    assert_eq!(events[0]["event_type"], "Opened");
    assert_eq!(events[0]["body"]["Opened"]["owner"], "acc-1");
    let of_one = json_lines(&cli(
        &url,
        &[
            "events",
            "--domain",
            "bank",
            "--aggregate",
            "acc-1",
            "--json",
        ],
    ));
    assert_eq!(
        of_one
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let deposits = json_lines(&cli(
        &url,
        &[
            "events",
            "--domain",
            "bank",
            "--type",
            "Deposited",
            "--from",
            "4",
            "--json",
        ],
    ));
    assert_eq!(deposits.len(), 1);
    assert_eq!(deposits[0]["sequence"], 4);
    let correlated = json_lines(&cli(
        &url,
        &[
            "events",
            "--domain",
            "bank",
            "--correlation",
            "0193a5a0-0000-7000-8000-000000000001",
            "--json",
        ],
    ));
    assert_eq!(correlated.len(), 2);

    let history = json_lines(&cli(&url, &["aggregate", "bank", "acc-1", "--json"]));
    assert_eq!(history.len(), 3);
    assert_eq!(history[2]["event_type"], "Deposited");
    assert_eq!(history[2]["sequence"], 4);
    let table = cli(&url, &["aggregate", "bank", "acc-1"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("3 events"));

    // --follow prints what comes next.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_cim-nats"))
        .args([
            "--server", &url, "events", "--domain", "bank", "--from", "5", "--follow", "--json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
    });
    RawEvent::new("bank.account.deposited", "acc-2", 2)
        .event_type("Deposited", 1)
        .publish(&test.client)
        .await
        .unwrap();
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a followed event");
    follow.kill().unwrap();
    let _ = follow.wait();
    let followed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(followed["aggregate_id"], "acc-2");
    assert_eq!(followed["sequence"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line() {
    let test = TestStore::start("bank").await.expect("fixture");
    let url = test.server.url();
    let missing = cli(&url, &["events", "--domain", "nope"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no stream NOPE_EVENTS"), "{err}");
    let missing = cli(&url, &["aggregate", "nope", "a1"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no stream \"NOPE_EVENTS\""));
    let down = cli("nats://127.0.0.1:1", &["--timeout", "2", "status"]);
    assert!(!down.status.success());
    let err = String::from_utf8_lossy(&down.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot connect to nats://127.0.0.1:1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_the_servers_permissions_is_one_line_naming_the_subject() {
    use cim_nats::testing::NatsServerBuilder;
    let server = NatsServerBuilder::new()
        .config(
            "authorization {\n  users: [\n    { user: admin, password: admin }\n    \
             { user: viewer, password: viewer, permissions: { publish: { deny: \
             [\"$JS.API.STREAM.INFO.BANK_EVENTS\"] } } }\n  ]\n}",
        )
        .start()
        .expect("server");
    let url = server.url();
    let admin = async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin".into())
        .connect(&url)
        .await
        .expect("admin");
    cim_nats::jetstream::JetStreamEventStore::new(
        admin,
        cim_nats::jetstream::StoreConfig::for_domain("bank"),
    )
    .await
    .expect("the bank's stream");
    let started = std::time::Instant::now();
    let denied = cli(
        &url,
        &[
            "--user",
            "viewer",
            "--password",
            "viewer",
            "aggregate",
            "bank",
            "acc-1",
        ],
    );
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("$JS.API.STREAM.INFO.BANK_EVENTS"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "said at once, not after the request timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_listed_shown_redriven_and_discarded() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;

    use cim_nats::jetstream::subscriber::EventSubscriberBuilder;
    use cim_nats::subscriber::FnEventHandler;
    use cim_nats::{HandlerError, StoredEvent};

    let test = TestStore::start("bank").await.expect("fixture");
    account_events(&test).await;
    let url = test.server.url();
    let down = Arc::new(AtomicBool::new(true));
    let handled = Arc::new(AtomicU32::new(0));
    let (d, h) = (Arc::clone(&down), Arc::clone(&handled));
    let subscription = EventSubscriberBuilder::new()
        .client(test.client.clone())
        .subject("bank.account.opened.*")
        .durable("welcomer")
        .handler(FnEventHandler::new(move |_: StoredEvent| {
            if d.load(Ordering::SeqCst) {
                return Err(HandlerError::msg("smtp down").permanent());
            }
            h.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }))
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();
    cim_nats::testing::wait_until(Duration::from_secs(10), "two dead letters", || {
        let n = json_lines(&cli(&url, &["dlq", "list", "--json"])).len();
        async move { n == 2 }
    })
    .await;
    let letters = json_lines(&cli(&url, &["dlq", "list", "--json"]));
    assert_eq!(letters.len(), 2, "the two openings");
    assert_eq!(letters[0]["consumer"], "welcomer");
    assert_eq!(letters[0]["reason"], "permanent-error");
    let (first, second) = (
        letters[0]["sequence"].as_u64().unwrap(),
        letters[1]["sequence"].as_u64().unwrap(),
    );
    let shown = &json_lines(&cli(&url, &["dlq", "show", &first.to_string(), "--json"]))[0];
    assert_eq!(shown["body"]["Opened"]["owner"], "acc-1");
    assert!(shown["error"].as_str().unwrap().contains("smtp down"));

    down.store(false, Ordering::SeqCst);
    // A change asks for --yes when not on a terminal (the test's stdin is not one).
    let unconfirmed = cli(&url, &["dlq", "redrive", &first.to_string()]);
    assert!(!unconfirmed.status.success());
    let err = String::from_utf8_lossy(&unconfirmed.stderr);
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(handled.load(Ordering::SeqCst), 0, "nothing redriven");
    let redriven = cli(&url, &["dlq", "redrive", &first.to_string(), "--yes"]);
    assert!(
        redriven.status.success(),
        "{}",
        String::from_utf8_lossy(&redriven.stderr)
    );
    assert!(String::from_utf8_lossy(&redriven.stdout).contains("handled, removed"));
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    let discarded = cli(&url, &["dlq", "discard", &second.to_string(), "--yes"]);
    assert!(discarded.status.success());
    assert!(json_lines(&cli(&url, &["dlq", "list", "--json"])).is_empty());
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "a discarded letter is not handled"
    );

    // Nobody to redrive with: one line, naming the consumer.
    subscription.shutdown().await.unwrap();
    let missing = cli(&url, &["dlq", "redrive", &first.to_string(), "--yes"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no dead letter"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_consumer_group_its_members_partitions_and_lag() {
    use cim_nats::jetstream::group::GroupOptions;
    use cim_nats::jetstream::subscriber::EventSubscriberBuilder;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let test = TestStore::start("bank").await.expect("fixture");
    account_events(&test).await;
    let url = test.server.url();
    let handled = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&handled);
    let handle = EventSubscriberBuilder::new()
        .client(test.client.clone())
        .subject("bank.>")
        .durable("audit")
        .handler(cim_nats::AsyncFnHandler::new(
            move |_: cim_nats::StoredEvent| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            },
        ))
        .group(GroupOptions::default().partitions(4).member("m1"))
        .build()
        .expect("subscriber")
        .subscribe()
        .await
        .expect("subscribe");
    cim_nats::testing::wait_until(
        Duration::from_secs(20),
        "the group to handle 4 events",
        || {
            let n = handled.load(Ordering::Relaxed);
            async move { n == 4 }
        },
    )
    .await;
    // The group as the tool shows it: one member holding the 4 partitions, nothing pending.
    let group = || json_lines(&cli(&url, &["status", "--json"]))[0]["groups"][0].clone();
    cim_nats::testing::wait_until(
        Duration::from_secs(20),
        "4 partitions held, nothing pending",
        || {
            let settled = group()["leases"].as_array().is_some_and(|l| {
                l.len() == 4 && l.iter().all(|p| p["pending"] == 0 && p["ack_pending"] == 0)
            });
            async move { settled }
        },
    )
    .await;
    let group = group();
    assert_eq!(group["group"], "audit", "{group}");
    assert_eq!(group["partitions"], 4);
    assert_eq!(group["members"][0]["member"], "m1");
    let leases = group["leases"].as_array().expect("leases");
    assert_eq!(leases.len(), 4, "{group}");
    assert!(leases
        .iter()
        .all(|l| l["member"] == "m1" && l["pending"] == 0 && l["ack_pending"] == 0));
    let table = String::from_utf8_lossy(&cli(&url, &["status"]).stdout).into_owned();
    assert!(
        table.contains("group audit: 4 partitions, members: 1"),
        "{table}"
    );
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_aggregate_shown_and_released_by_redriving_its_head() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use cim_nats::jetstream::subscriber::EventSubscriberBuilder;
    use cim_nats::subscriber::FnEventHandler;
    use cim_nats::{HandlerError, StoredEvent};

    let test = TestStore::start("bank").await.expect("fixture");
    let url = test.server.url();
    let down = Arc::new(AtomicBool::new(true));
    let handled: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let (d, h) = (Arc::clone(&down), Arc::clone(&handled));
    let subscription = EventSubscriberBuilder::new()
        .client(test.client.clone())
        .subject("bank.>")
        .durable("ledger")
        .sequenced_dead_letters()
        .handler(FnEventHandler::new(move |e: StoredEvent| {
            if e.aggregate_id.as_str() == "acc-1" && d.load(Ordering::SeqCst) {
                return Err(HandlerError::msg("ledger down").permanent());
            }
            h.lock()
                .unwrap()
                .push((e.aggregate_id.to_string(), e.aggregate_version));
            Ok(())
        }))
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();
    // acc-1: versions 1 to 3, the first refused, the others parked behind it; acc-2 flows.
    account_events(&test).await;
    cim_nats::testing::wait_until(Duration::from_secs(10), "acc-1 parked", || {
        let n = json_lines(&cli(&url, &["dlq", "list", "--json"])).len();
        async move { n == 3 }
    })
    .await;
    let parked = json_lines(&cli(&url, &["dlq", "parked", "--json"]));
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0]["aggregate"], "acc-1");
    assert_eq!(parked[0]["consumer"], "ledger");
    let status: Value = serde_json::from_slice(&cli(&url, &["status", "--json"]).stdout).unwrap();
    assert_eq!(status["dead_letters"][0]["letters"], 3);
    assert_eq!(status["dead_letters"][0]["parked_aggregates"], 1);
    let table = String::from_utf8_lossy(&cli(&url, &["dlq", "parked"]).stdout).to_string();
    assert!(
        table.contains("acc-1") && table.contains("ledger"),
        "{table}"
    );
    assert_eq!(*handled.lock().unwrap(), vec![("acc-2".to_owned(), 1)]);

    down.store(false, Ordering::SeqCst);
    let head = parked[0]["head"].as_u64().unwrap().to_string();
    let redriven = cli(&url, &["dlq", "redrive", &head, "--yes"]);
    let out = String::from_utf8_lossy(&redriven.stdout);
    assert!(
        redriven.status.success(),
        "{}",
        String::from_utf8_lossy(&redriven.stderr)
    );
    assert!(
        out.contains("2 parked events after it handled in order"),
        "{out}"
    );
    assert_eq!(
        *handled.lock().unwrap(),
        vec![
            ("acc-2".to_owned(), 1),
            ("acc-1".to_owned(), 1),
            ("acc-1".to_owned(), 2),
            ("acc-1".to_owned(), 3)
        ]
    );
    assert!(json_lines(&cli(&url, &["dlq", "parked", "--json"])).is_empty());
    subscription.shutdown().await.unwrap();
}
