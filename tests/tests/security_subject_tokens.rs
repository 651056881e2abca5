//! Ids from user data can never widen a subscription or write to another aggregate's subject.
//!
//! For any string, `AggregateId::new` either refuses it or yields one subject token: no `*`,
//! `>`, `.`, whitespace or control character, not empty. Put into the aggregate's filter
//! `{domain}.*.*.{id}` and its stored subject, it matches that aggregate only. On a real server,
//! appends with such ids land on their own subject and nowhere else.
//!
//! 10,000 cases per pure property; 1,000,000 with `CIM_NATS_SOAK=1`.

mod support;

use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::subject::{subject_matches, validate_subject, validate_token};
use cim_nats::{AggregateId, EventId, EventStore, ExpectedVersion, NewEvent, Subject};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRunner};

fn soak() -> bool {
    std::env::var("CIM_NATS_SOAK").is_ok_and(|v| v == "1")
}

fn config() -> Config {
    Config {
        cases: if soak() { 1_000_000 } else { 10_000 },
        failure_persistence: None,
        // Much faster than the default ChaCha in unoptimised test builds.
        rng_algorithm: RngAlgorithm::XorShift,
        ..Config::default()
    }
}

/// Strings a hostile caller would try: any text, text made of the characters that matter to
/// NATS subjects, and well-formed ids with one bad character put in.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        3 => "[a-z0-9.*> \t\r\n\u{0}\u{7f}\u{85}\u{a0}\u{2028}\u{3000}\u{feff}é-]{0,12}",
        2 => ("[a-zA-Z0-9_-]{0,10}", proptest::sample::select(vec![
            ".", "*", ">", " ", "\t", "\r\n", "\u{0}", "\u{1b}", "\u{85}", "\u{a0}", "\u{2028}",
            "\r\nPUB x 1\r\n", ".>", ".*.",
        ]), "[a-zA-Z0-9_-]{0,10}")
            .prop_map(|(a, bad, b)| format!("{a}{bad}{b}")),
        1 => (250usize..262).prop_map(|n| "x".repeat(n)),
        2 => "[a-zA-Z0-9_-]{1,40}",
    ]
}

fn is_bad(c: char) -> bool {
    matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control()
}

/// What must hold for any accepted id.
fn accepted(id: &AggregateId) -> Result<(), TestCaseError> {
    let token = id.as_str();
    prop_assert!(!token.is_empty());
    prop_assert!(token.len() <= cim_nats::subject::MAX_TOKEN_LEN);
    prop_assert!(!token.chars().any(is_bad), "{:?}", token);
    prop_assert!(validate_token(token).is_ok());
    // The aggregate's filter and stored subject: exactly four tokens, the id the last one.
    let filter = format!("shop.*.*.{token}");
    prop_assert_eq!(filter.split('.').count(), 4);
    prop_assert!(validate_subject(&filter, true).is_ok());
    let subject = Subject::for_event("shop.order.placed", id);
    prop_assert_eq!(subject.tokens().count(), 4);
    prop_assert_eq!(subject.tokens().next_back(), Some(token));
    prop_assert!(Subject::new(subject.as_str()).is_ok());
    prop_assert!(subject_matches(&filter, subject.as_str()));
    // It reaches no other aggregate, and no longer or shorter subject.
    for other in ["x", "other", "0", "é"] {
        let elsewhere = format!("shop.order.placed.{other}");
        prop_assert_eq!(subject_matches(&filter, &elsewhere), other == token);
    }
    let longer = format!("shop.order.placed.{token}.x");
    let shorter = format!("shop.order.{token}");
    prop_assert!(!subject_matches(&filter, &longer));
    prop_assert!(!subject_matches(&filter, &shorter));
    Ok(())
}

#[test]
fn any_string_is_refused_or_one_token_that_matches_one_aggregate() {
    TestRunner::new(config())
        .run(&hostile(), |s| {
            match AggregateId::new(&s) {
                Ok(id) => {
                    prop_assert_eq!(id.as_str(), s.as_str());
                    accepted(&id)?;
                }
                Err(e) => {
                    prop_assert!(
                        s.is_empty()
                            || s.len() > cim_nats::subject::MAX_TOKEN_LEN
                            || s.chars().any(is_bad),
                        "{:?} refused: {}",
                        s,
                        e
                    );
                    prop_assert_eq!(e.value(), s.as_str());
                }
            }
            // Every other way in gives the same verdict.
            let json = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(
                serde_json::from_str::<AggregateId>(&json).is_ok(),
                AggregateId::new(&s).is_ok()
            );
            prop_assert_eq!(
                s.parse::<AggregateId>().is_ok(),
                AggregateId::new(&s).is_ok()
            );
            prop_assert_eq!(
                AggregateId::try_from(s.as_str()).is_ok(),
                AggregateId::new(&s).is_ok()
            );
            Ok(())
        })
        .unwrap();
}

#[test]
fn two_different_ids_never_share_a_subject_or_a_filter() {
    TestRunner::new(config())
        .run(&(hostile(), hostile()), |(a, b)| {
            let (Ok(a), Ok(b)) = (AggregateId::new(&a), AggregateId::new(&b)) else {
                return Ok(());
            };
            let filter_a = format!("shop.*.*.{a}");
            let subject_b = Subject::for_event("shop.order.placed", &b);
            prop_assert_eq!(subject_matches(&filter_a, subject_b.as_str()), a == b);
            Ok(())
        })
        .unwrap();
}

fn event() -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: "Placed".into(),
        schema_version: 1,
        entity_kind: "order".into(),
        routing_subject: "shop.order.placed".into(),
        payload: b"{}".to_vec().into(),
        timestamp: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: None,
    }
}

/// Appends with accepted hostile ids land on their own subject only: each aggregate reads back
/// exactly its own event, and the stream's subject index has exactly one subject per id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_with_hostile_ids_land_on_their_own_subject() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("shop"))
        .await
        .unwrap();
    // Generate the ids first (the runner is synchronous), then append them all.
    let mut ids: Vec<AggregateId> = Vec::new();
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    for _ in 0..400 {
        let s = hostile().new_tree(&mut runner).unwrap().current();
        if let Ok(id) = AggregateId::new(&s) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    assert!(ids.len() > 50, "only {} ids accepted", ids.len());
    for id in &ids {
        let result = store
            .append(id, ExpectedVersion::NoStream, vec![event()])
            .await
            .unwrap_or_else(|e| panic!("append for {id:?}: {e}"));
        assert_eq!(result.version, 1);
    }
    for id in &ids {
        let events = store.read_aggregate(id, 0).await.unwrap();
        assert_eq!(events.len(), 1, "{id:?}");
        assert_eq!(&events[0].aggregate_id, id);
        assert_eq!(events[0].subject, format!("shop.order.placed.{id}"));
        assert_eq!(store.aggregate_version(id).await.unwrap(), Some(1));
    }
    // The stream holds one message per id, each on its own subject.
    let all = store.read_all().await.unwrap();
    assert_eq!(all.len(), ids.len());
    let mut subjects: Vec<&str> = all.iter().map(|e| e.subject.as_str()).collect();
    subjects.sort_unstable();
    subjects.dedup();
    assert_eq!(subjects.len(), ids.len());
}
