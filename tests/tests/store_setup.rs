//! Setting a store up: server checks, idempotent stream creation, refusing what does not fit.

mod support;

use std::time::Duration;

use cim_nats::jetstream::{JetStreamEventStore, Storage, StoreConfig};
use cim_nats::testing::NatsServer;
use cim_nats::SetupErrorKind;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A stub that speaks just enough of the NATS protocol to announce an old server version.
async fn old_server_stub(version: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let info = format!(
                    "INFO {{\"server_id\":\"STUB\",\"server_name\":\"stub\",\"version\":\"{version}\",\
                     \"go\":\"go1.19\",\"host\":\"127.0.0.1\",\"port\":{port},\"headers\":true,\
                     \"max_payload\":1048576,\"proto\":1,\"jetstream\":true}}\r\n"
                );
                if write.write_all(info.as_bytes()).await.is_err() {
                    return;
                }
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("PING") && write.write_all(b"PONG\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("nats://127.0.0.1:{port}")
}

#[tokio::test]
async fn a_server_below_the_minimum_is_refused_naming_both_versions() {
    let url = old_server_stub("2.9.10").await;
    let client = async_nats::connect(&url)
        .await
        .expect("the stub accepts clients");
    let err = JetStreamEventStore::new(client, StoreConfig::for_domain("old"))
        .await
        .unwrap_err();
    assert_eq!(
        *err.kind(),
        SetupErrorKind::ServerNotSupported {
            found: "2.9.10".to_owned(),
            accepted: cim_nats::jetstream::ACCEPTED_SERVER_VERSIONS,
        }
    );
    let message = err.to_string();
    assert!(
        message.contains("2.9.10")
            && message
                .contains("2.12.14 or later on 2.12, 2.14.4 or later on 2.14, or 2.15.0 or later"),
        "{message}"
    );
}

/// 2.14.0 to 2.14.3 are newer than 2.12.14 but lack the fix for `-Subject` expectations inside
/// atomic batches; a release candidate counts as older than its release.
#[tokio::test]
async fn versions_without_the_batch_expectation_fix_are_refused() {
    for version in [
        "2.12.1-RC.2",
        "2.12.13",
        "2.14.0",
        "2.14.3",
        "2.13.2",
        "2.15.0-RC.1",
    ] {
        let url = old_server_stub(version).await;
        let client = async_nats::connect(&url).await.unwrap();
        let err = JetStreamEventStore::new(client, StoreConfig::for_domain("old"))
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind(), SetupErrorKind::ServerNotSupported { found, .. } if found == version),
            "{version}: {err}"
        );
    }
}

#[tokio::test]
async fn a_server_without_jetstream_is_refused() {
    let server = NatsServer::builder().without_jetstream().start().unwrap();
    let client = server.connect().await.unwrap();
    let err = JetStreamEventStore::new(client, StoreConfig::for_domain("nojs"))
        .await
        .unwrap_err();
    assert_eq!(*err.kind(), SetupErrorKind::JetStreamDisabled);
    assert!(err.to_string().contains("-js"), "{err}");
}

#[tokio::test]
async fn an_existing_stream_with_other_settings_is_left_alone() {
    let (_server, client) = support::server().await;
    let config = StoreConfig::for_domain("inventory");
    JetStreamEventStore::new(client.clone(), config.clone())
        .await
        .unwrap();
    let mut other = config.clone();
    other.max_messages = Some(10);
    other.storage = Storage::Memory;
    let err = JetStreamEventStore::new(client.clone(), other)
        .await
        .unwrap_err();
    match err.kind() {
        SetupErrorKind::StreamConfigMismatch {
            stream,
            differences,
        } => {
            assert_eq!(stream, "INVENTORY_EVENTS");
            assert_eq!(differences.len(), 2, "{differences:?}");
            assert!(differences[0].starts_with("storage"), "{differences:?}");
            assert!(
                differences[1].starts_with("max_messages"),
                "{differences:?}"
            );
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // The stream kept its settings.
    let js = async_nats::jetstream::new(client);
    let info = js
        .get_stream("INVENTORY_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.max_messages, -1);
}

#[tokio::test]
async fn overlapping_subjects_are_a_clear_error() {
    let (_server, client) = support::server().await;
    JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("billing"))
        .await
        .unwrap();
    let overlapping = StoreConfig::for_domain("billing").with_stream_name("BILLING_COPY");
    let err = JetStreamEventStore::new(client, overlapping)
        .await
        .unwrap_err();
    assert_eq!(
        *err.kind(),
        SetupErrorKind::SubjectsOverlap {
            stream: "BILLING_COPY".to_owned()
        }
    );
    assert!(err.to_string().contains("10065"), "{err}");
}

#[tokio::test]
async fn invalid_configurations_are_refused_before_touching_the_server() {
    let (_server, client) = support::server().await;
    for config in [
        StoreConfig::for_domain("ok").with_stream_name("has.dot"),
        StoreConfig::for_domain("ok").with_replicas(0),
        StoreConfig {
            subjects: vec!["bad subject.>".to_owned()],
            ..StoreConfig::for_domain("ok")
        },
        StoreConfig {
            max_age: Some(Duration::ZERO),
            ..StoreConfig::for_domain("ok")
        },
    ] {
        let err = JetStreamEventStore::new(client.clone(), config.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind(), SetupErrorKind::InvalidConfig(_)),
            "{config:?} gave {err}"
        );
    }
}

/// A service that starts before NATS connects with `retry_on_initial_connect`: the store waits
/// for the connection (bounded) and reads the server's version then, instead of refusing an
/// empty one.
#[tokio::test]
async fn a_client_still_connecting_is_waited_for() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let starter = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(800));
        NatsServer::builder().port(port).start().unwrap()
    });
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("late"))
        .await
        .expect("the store waits for the connection");
    assert_eq!(store.stream_name(), "LATE_EVENTS");
    drop(starter.await.unwrap());
}

/// No server ever answers: a clear error after the bounded wait, not a version of "".
#[tokio::test]
async fn a_client_that_never_connects_is_reported_as_not_connected() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let err = JetStreamEventStore::new(client, StoreConfig::for_domain("never"))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), SetupErrorKind::NotConnected { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not connected"), "{err}");
}

#[tokio::test]
async fn an_existing_stream_whose_events_can_be_deleted_is_refused() {
    let (_server, client) = support::server().await;
    // A stream made by hand like the store's, but allowing deletes.
    JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("model"))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut config = js
        .get_stream("MODEL_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.name = "LEDGER_EVENTS".into();
    config.subjects = vec!["ledger.>".into()];
    config.deny_delete = false;
    js.create_stream(config).await.unwrap();
    let err = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("ledger"))
        .await
        .unwrap_err();
    match err.kind() {
        SetupErrorKind::StreamConfigMismatch { differences, .. } => {
            assert_eq!(differences.len(), 1, "{differences:?}");
            assert!(differences[0].starts_with("deny_delete"), "{differences:?}");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
}
