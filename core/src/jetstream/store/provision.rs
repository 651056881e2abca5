//! Setting a store up: waiting for a client that is still connecting, and creating the stream
//! (or finding it as configured: another configuration is reported, never changed).

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::Client;

use crate::jetstream::api::codes;
use crate::jetstream::config::{Storage, StoreConfig};
use crate::jetstream::setup::{SetupError, SetupErrorKind};

/// Waits until `client` has connected to a server (its `INFO`, and so the server's version, is
/// known only then).
pub(crate) async fn wait_connected(client: &Client, wait: Duration) -> Result<(), SetupError> {
    let deadline = tokio::time::Instant::now() + wait;
    while client.connection_state() != async_nats::connection::State::Connected
        || client.server_info().version.is_empty()
    {
        if tokio::time::Instant::now() >= deadline {
            return Err(SetupError::new(SetupErrorKind::NotConnected {
                waited: wait,
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn setup_error(code: u64, description: String) -> SetupError {
    SetupError::new(SetupErrorKind::Server { code, description })
}

pub(super) fn wanted_config(config: &StoreConfig) -> stream::Config {
    stream::Config {
        name: config.stream_name.clone(),
        subjects: config.subjects.clone(),
        description: config.description.clone(),
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        max_messages: config.max_messages.map_or(-1, |n| n as i64),
        max_bytes: config.max_bytes.map_or(-1, |n| n as i64),
        max_age: config.max_age.unwrap_or_default(),
        max_messages_per_subject: -1,
        storage: match config.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        num_replicas: config.replicas,
        duplicate_window: config.duplicate_window,
        allow_direct: true,
        allow_atomic_publish: true,
        deny_delete: true,
        deny_purge: false,
        ..Default::default()
    }
}

fn differences(want: &stream::Config, have: &stream::Config) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut check = |name: &str, w: String, h: String| {
        if w != h {
            diffs.push(format!("{name}: configured {w}, stream has {h}"));
        }
    };
    let mut ws = want.subjects.clone();
    let mut hs = have.subjects.clone();
    ws.sort();
    hs.sort();
    check("subjects", format!("{ws:?}"), format!("{hs:?}"));
    check(
        "storage",
        format!("{:?}", want.storage),
        format!("{:?}", have.storage),
    );
    check(
        "retention",
        format!("{:?}", want.retention),
        format!("{:?}", have.retention),
    );
    check(
        "discard",
        format!("{:?}", want.discard),
        format!("{:?}", have.discard),
    );
    check(
        "max_messages",
        want.max_messages.to_string(),
        have.max_messages.to_string(),
    );
    check(
        "max_bytes",
        want.max_bytes.to_string(),
        have.max_bytes.to_string(),
    );
    check(
        "max_age",
        format!("{:?}", want.max_age),
        format!("{:?}", have.max_age),
    );
    check(
        "duplicate_window",
        format!("{:?}", want.duplicate_window),
        format!("{:?}", have.duplicate_window),
    );
    check(
        "replicas",
        want.num_replicas.to_string(),
        have.num_replicas.to_string(),
    );
    check(
        "allow_direct",
        want.allow_direct.to_string(),
        have.allow_direct.to_string(),
    );
    check(
        "allow_atomic_publish",
        want.allow_atomic_publish.to_string(),
        have.allow_atomic_publish.to_string(),
    );
    // An event stream whose events can be deleted one by one is not a history.
    check(
        "deny_delete",
        want.deny_delete.to_string(),
        have.deny_delete.to_string(),
    );
    diffs
}

pub(super) async fn ensure_stream(
    context: &jetstream::Context,
    config: &StoreConfig,
) -> Result<(), SetupError> {
    use jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind};
    let want = wanted_config(config);
    for _ in 0..3 {
        match context.get_stream(&config.stream_name).await {
            Ok(mut stream) => {
                let info = stream
                    .info()
                    .await
                    .map_err(|e| SetupError::with_source(SetupErrorKind::Connection, e))?;
                let diffs = differences(&want, &info.config);
                if diffs.is_empty() {
                    return Ok(());
                }
                return Err(SetupError::new(SetupErrorKind::StreamConfigMismatch {
                    stream: config.stream_name.clone(),
                    differences: diffs,
                }));
            }
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j) => match j.error_code().0 {
                    codes::STREAM_NOT_FOUND => {}
                    codes::NOT_ENABLED | codes::NOT_ENABLED_FOR_ACCOUNT => {
                        return Err(SetupError::with_source(
                            SetupErrorKind::JetStreamDisabled,
                            e,
                        ))
                    }
                    code => return Err(setup_error(code, j.to_string())),
                },
                // No JetStream responder for this account.
                GetStreamErrorKind::Request if e.to_string().contains("no responders") => {
                    return Err(SetupError::with_source(
                        SetupErrorKind::JetStreamDisabled,
                        e,
                    ))
                }
                _ => return Err(SetupError::with_source(SetupErrorKind::Connection, e)),
            },
        }
        match context.create_stream(want.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => match e.kind() {
                CreateStreamErrorKind::JetStream(j) => match j.error_code().0 {
                    // Created concurrently by another process: compare on the next round.
                    codes::STREAM_NAME_EXISTS => continue,
                    codes::SUBJECTS_OVERLAP => {
                        return Err(SetupError::with_source(
                            SetupErrorKind::SubjectsOverlap {
                                stream: config.stream_name.clone(),
                            },
                            e,
                        ))
                    }
                    codes::NOT_ENABLED | codes::NOT_ENABLED_FOR_ACCOUNT => {
                        return Err(SetupError::with_source(
                            SetupErrorKind::JetStreamDisabled,
                            e,
                        ))
                    }
                    code => return Err(setup_error(code, j.to_string())),
                },
                CreateStreamErrorKind::JetStreamUnavailable => {
                    return Err(SetupError::with_source(
                        SetupErrorKind::JetStreamDisabled,
                        e,
                    ))
                }
                _ => return Err(SetupError::with_source(SetupErrorKind::Connection, e)),
            },
        }
    }
    Err(setup_error(
        codes::STREAM_NAME_EXISTS,
        format!(
            "stream {:?} could not be created or read",
            config.stream_name
        ),
    ))
}
