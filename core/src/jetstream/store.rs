//! [`JetStreamEventStore`]: the event store on a JetStream stream.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::Client;
use async_trait::async_trait;
use bytes::Bytes;

use crate::envelope::{StoredEvent, StreamSequence};
use crate::error::{SetupError, SetupErrorKind, StoreError, StoreErrorKind};
use crate::headers as h;
use crate::jetstream::api::{self, codes, Answer, DirectGet, MsgGet, Published};
use crate::jetstream::codec::{decode_stored, event_headers, RawMessage};
use crate::jetstream::config::{Storage, StoreConfig};
use crate::jetstream::server::check_server_info;
use crate::store::{AppendResult, EventStore, EventStream, ExpectedVersion, NewEvent, ReadFrom};
use crate::subject::{validate_subject, AggregateId, Subject};

/// Most events one append may carry (the server's limit for an atomic batch).
pub const MAX_EVENTS_PER_APPEND: usize = 1000;

/// Aggregates whose last known position is remembered, to skip a lookup before an append.
const POSITION_CACHE: usize = 16_384;

/// Atomic batches one store sends at once (the server's limit per stream is 50).
const BATCHES_IN_FLIGHT: usize = 50;

/// Messages per page when reading an aggregate or the whole stream.
const PAGE: usize = 1000;

/// The last event of an aggregate: its version and stream sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    version: u64,
    sequence: u64,
}

/// The last event of an aggregate as read from the server: its position, id and payload.
#[derive(Debug, Clone)]
struct Last {
    position: Position,
    event_id: Option<uuid::Uuid>,
    payload: Bytes,
}

/// An event store on a JetStream stream.
///
/// Each event is one message on `{domain}.{aggregate}.{operation}.{aggregate_id}` with its JSON as
/// body and its metadata in headers (see [`crate::headers`]). Concurrency is checked by the server:
/// every append carries `Nats-Expected-Last-Subject-Sequence` for the aggregate's subjects
/// `{domain}.*.*.{aggregate_id}`. Events of one append are stored atomically (a JetStream atomic
/// batch when there are several). Retries are recognised by event id (`Nats-Msg-Id`) within the
/// stream's duplicate window, and by comparing ids after it.
///
/// Cheap to clone; clones share the connection and caches.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
///
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let store = JetStreamEventStore::new(client, StoreConfig::for_domain("inventory")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct JetStreamEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    context: jetstream::Context,
    config: StoreConfig,
    direct_subject: String,
    timeout: Duration,
    max_payload: usize,
    positions: Mutex<HashMap<AggregateId, Position>>,
    /// Subjects (literal ones, and aggregate scopes) known to hold a message the client cannot
    /// parse: they are read through the JSON API, which never breaks the connection.
    unparseable: Mutex<std::collections::HashSet<String>>,
    /// The server keeps at most 50 atomic batches per stream in flight; this store never
    /// sends more.
    batches: tokio::sync::Semaphore,
}

impl fmt::Debug for JetStreamEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamEventStore")
            .field("stream", &self.inner.config.stream_name)
            .field("subjects", &self.inner.config.subjects)
            .finish_non_exhaustive()
    }
}

/// How long setting a store up waits for a client that is not connected yet.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

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

impl JetStreamEventStore {
    /// Connects the store to its stream, creating the stream if it does not exist.
    ///
    /// Checks first that the server is of an accepted version
    /// ([`crate::jetstream::ACCEPTED_SERVER_VERSIONS`]) with JetStream. A client that is not
    /// connected yet (made with `ConnectOptions::retry_on_initial_connect`) is waited for, up to
    /// 10 s. Creating is idempotent; an existing stream with other settings is left unchanged and
    /// reported.
    ///
    /// # Errors
    ///
    /// [`SetupErrorKind::ServerNotSupported`], [`SetupErrorKind::NotConnected`],
    /// [`SetupErrorKind::JetStreamDisabled`],
    /// [`SetupErrorKind::StreamConfigMismatch`], [`SetupErrorKind::SubjectsOverlap`],
    /// [`SetupErrorKind::InvalidConfig`], or a server error.
    pub async fn new(client: Client, config: impl Into<StoreConfig>) -> Result<Self, SetupError> {
        let config = config.into();
        config.validate()?;
        wait_connected(&client, CONNECT_WAIT).await?;
        let info = client.server_info();
        check_server_info(&info)?;
        let context = jetstream::new(client.clone());
        // A user not permitted to use the JetStream API gets its requests dropped, not refused:
        // find out and say so, rather than time out with no reason. Publishing to the domain's
        // subjects is not checked here: a reader (projections, loads) needs no such permission,
        // and an append refused by permissions says so itself.
        let stream_info = format!("$JS.API.STREAM.INFO.{}", config.stream_name);
        api::permissions::setup_through(&client, &stream_info, ensure_stream(&context, &config))
            .await?;
        let direct_subject = format!("$JS.API.DIRECT.GET.{}", config.stream_name);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                context,
                config,
                direct_subject,
                timeout: Duration::from_secs(10),
                max_payload: info.max_payload,
                positions: Mutex::new(HashMap::new()),
                unparseable: Mutex::new(std::collections::HashSet::new()),
                batches: tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT),
            }),
        })
    }

    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.inner.config.stream_name
    }

    /// The NATS client the store uses.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// How long the store waits for the server to answer one request.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The JetStream context the store uses.
    pub fn context(&self) -> &jetstream::Context {
        &self.inner.context
    }

    /// The subject filter of one aggregate's events: the routing subject's first token, `*` for
    /// each further token, then the id (`infrastructure.*.*.{id}`).
    fn scope(routing: &str, id: &AggregateId) -> String {
        let mut tokens = routing.split('.');
        let mut scope = String::with_capacity(routing.len() + id.as_str().len() + 8);
        scope.push_str(tokens.next().unwrap_or_default());
        for _ in tokens {
            scope.push_str(".*");
        }
        scope.push('.');
        scope.push_str(id.as_str());
        scope
    }

    fn cached(&self, id: &AggregateId) -> Option<Position> {
        self.inner
            .positions
            .lock()
            .ok()
            .and_then(|p| p.get(id).copied())
    }

    fn remember(&self, id: &AggregateId, position: Position) {
        if let Ok(mut p) = self.inner.positions.lock() {
            if p.len() >= POSITION_CACHE && !p.contains_key(id) {
                p.clear();
            }
            let entry = p.entry(id.clone()).or_insert(position);
            if position.sequence >= entry.sequence {
                *entry = position;
            }
        }
    }

    fn forget(&self, id: &AggregateId) {
        if let Ok(mut p) = self.inner.positions.lock() {
            p.remove(id);
        }
    }

    /// The last event of the aggregate, read from the server (one direct get).
    async fn position(&self, scope: &str) -> Result<Option<Position>, StoreError> {
        Ok(self.last(scope).await?.map(|l| l.position))
    }

    /// The last event of the aggregate with its id.
    async fn last(&self, scope: &str) -> Result<Option<Last>, StoreError> {
        let raw = if self.is_unparseable(scope) {
            self.safe_get(&MsgGet {
                last_by_subj: Some(scope),
                ..MsgGet::default()
            })
            .await?
        } else {
            let request = DirectGet {
                last_by_subj: Some(scope.to_owned()),
                ..DirectGet::default()
            };
            match api::direct_get(
                &self.inner.client,
                &self.inner.direct_subject,
                &request,
                self.inner.timeout,
            )
            .await?
            {
                Answer::Got(raw) => raw,
                // The client reconnected: perhaps because this very message is one it cannot
                // parse. Read it through the JSON API, which cannot break the connection.
                Answer::Reconnected => {
                    let raw = self
                        .safe_get(&MsgGet {
                            last_by_subj: Some(scope),
                            ..MsgGet::default()
                        })
                        .await?;
                    if raw.as_ref().is_some_and(|r| r.defect.is_some()) {
                        self.mark_unparseable(scope);
                    }
                    raw
                }
            }
        };
        raw.map(|raw| {
            // A message the client cannot parse may still say its version: an append needs
            // only that (a load of the aggregate fails, naming the message).
            let version = version_of(&raw)?;
            let event_id = raw
                .headers
                .get(h::MSG_ID)
                .and_then(|v| uuid::Uuid::parse_str(v.as_str()).ok());
            Ok(Last {
                position: Position {
                    version,
                    sequence: raw.sequence,
                },
                event_id,
                payload: raw.payload.clone(),
            })
        })
        .transpose()
    }

    /// One message by its stream sequence.
    async fn message_at(&self, sequence: u64) -> Result<Option<RawMessage>, StoreError> {
        let request = DirectGet {
            seq: Some(sequence),
            ..DirectGet::default()
        };
        match api::direct_get(
            &self.inner.client,
            &self.inner.direct_subject,
            &request,
            self.inner.timeout,
        )
        .await?
        {
            Answer::Got(raw) => Ok(raw),
            Answer::Reconnected => {
                self.safe_get(&MsgGet {
                    seq: Some(sequence),
                    ..MsgGet::default()
                })
                .await
            }
        }
    }

    /// One message through the JSON API (see [`api::msg_get`]).
    async fn safe_get(&self, request: &MsgGet<'_>) -> Result<Option<RawMessage>, StoreError> {
        api::msg_get(
            &self.inner.client,
            &self.inner.config.stream_name,
            request,
            self.inner.timeout,
        )
        .await
    }

    fn is_unparseable(&self, subject: &str) -> bool {
        self.inner
            .unparseable
            .lock()
            .is_ok_and(|s| !s.is_empty() && s.contains(subject))
    }

    /// Remembers that `subject` holds a message the client cannot parse, and so does the scope
    /// of its aggregate.
    fn mark_unparseable(&self, subject: &str) {
        /// More than this many such subjects in one process: reads of the others take the fast
        /// path again (and reconnect once each).
        const MAX_REMEMBERED: usize = 100_000;
        let domain = self.inner.config.domain();
        let scope = subject
            .rsplit_once('.')
            .map(|(_, id)| format!("{domain}.*.*.{id}"));
        tracing::warn!(
            stream = %self.inner.config.stream_name,
            subject,
            "a message the NATS client cannot parse is stored on this subject: it is read through \
             the JSON API from now on"
        );
        if let Ok(mut set) = self.inner.unparseable.lock() {
            if set.len() < MAX_REMEMBERED {
                set.insert(subject.to_owned());
                if let Some(scope) = scope {
                    set.insert(scope);
                }
            }
        }
    }

    fn check_events(
        &self,
        aggregate_id: &AggregateId,
        events: &[NewEvent],
    ) -> Result<(String, Vec<Subject>), StoreError> {
        let invalid = |why: String| Err(StoreError::new(StoreErrorKind::InvalidAppend(why)));
        if events.is_empty() {
            return invalid("no events to append".to_owned());
        }
        if events.len() > MAX_EVENTS_PER_APPEND {
            return invalid(format!(
                "{} events in one append; at most {MAX_EVENTS_PER_APPEND}",
                events.len()
            ));
        }
        let scope = Self::scope(&events[0].routing_subject, aggregate_id);
        let mut subjects = Vec::with_capacity(events.len());
        for event in events {
            validate_subject(&event.routing_subject, false)
                .map_err(|e| StoreError::with_source(StoreErrorKind::InvalidSubject, e))?;
            if Self::scope(&event.routing_subject, aggregate_id) != scope {
                return invalid(format!(
                    "events of one append must share the domain and subject shape: {:?} and {:?}",
                    events[0].routing_subject, event.routing_subject
                ));
            }
            let subject = Subject::for_event(&event.routing_subject, aggregate_id);
            if !self
                .inner
                .config
                .subjects
                .iter()
                .any(|s| crate::subject::subject_matches(s, subject.as_str()))
            {
                return invalid(format!(
                    "subject {subject} is not captured by stream {} ({:?})",
                    self.inner.config.stream_name, self.inner.config.subjects
                ));
            }
            subjects.push(subject);
        }
        Ok((scope, subjects))
    }

    fn headers_for(
        &self,
        event: &NewEvent,
        subject: &Subject,
        aggregate_id: &AggregateId,
        version: u64,
    ) -> Result<async_nats::HeaderMap, StoreError> {
        let headers = event_headers(event, aggregate_id, version);
        let size = event.payload.len() + subject.as_str().len() + headers_len(&headers) + 64;
        if size > self.inner.max_payload {
            return Err(StoreError::new(StoreErrorKind::PayloadTooLarge {
                size,
                max: self.inner.max_payload,
            }));
        }
        Ok(headers)
    }

    /// Were these events already stored right after `expected` (a retry after the dedupe
    /// window)? Then the append is a success and this returns the original result.
    async fn already_stored(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: &[NewEvent],
        last: Option<Last>,
    ) -> Result<Option<AppendResult>, StoreError> {
        let base = match expected {
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::Exact(n) => n,
            ExpectedVersion::Any => return Ok(None),
        };
        let k = events.len() as u64;
        let Some(last) = last else {
            return Ok(None);
        };
        let top = last.position.version;
        if top < base + k {
            return Ok(None);
        }
        if top == base + k {
            // The aggregate's last event decides: ours (the events of one append are stored
            // together, at consecutive sequences) or someone else's.
            let Some(mine) = events.last() else {
                return Ok(None);
            };
            let ours = last.event_id == Some(*mine.event_id.as_uuid());
            if ours && last.payload != mine.payload {
                return Err(reused_id(mine, last.position.sequence));
            }
            return Ok(ours.then(|| AppendResult {
                sequences: (last.position.sequence + 1 - k..=last.position.sequence)
                    .map(StreamSequence)
                    .collect(),
                version: top,
                duplicate: true,
            }));
        }
        // Ours, if stored, are the events right after version `base`. Read back from the last
        // event in growing windows of stream sequences rather than the whole history, so that a
        // conflict costs what the expectation lags behind, not what the aggregate holds. A window
        // that starts after version `base + 1` shows as a version gap: widen it.
        let mut window = 64 * (top - base);
        let stored = loop {
            let from = last.position.sequence.saturating_sub(window);
            match self
                .read_aggregate_after(aggregate_id, base, StreamSequence(from))
                .await
            {
                Ok(stored) => break stored,
                Err(e) if from > 0 && matches!(e.kind(), StoreErrorKind::Decode { .. }) => {
                    window = window.saturating_mul(8);
                }
                Err(e) => return Err(e),
            }
        };
        if stored.len() < events.len() {
            return Ok(None);
        }
        let same = stored
            .iter()
            .zip(events)
            .all(|(s, e)| s.event_id == e.event_id);
        if !same {
            return Ok(None);
        }
        if let Some((s, e)) = stored
            .iter()
            .zip(events)
            .find(|(s, e)| s.payload != e.payload)
        {
            return Err(reused_id(e, s.stream_sequence.0));
        }
        Ok(Some(AppendResult {
            sequences: stored[..events.len()]
                .iter()
                .map(|s| s.stream_sequence)
                .collect(),
            version: base + events.len() as u64,
            duplicate: true,
        }))
    }

    async fn publish_one(
        &self,
        subject: &Subject,
        mut headers: async_nats::HeaderMap,
        scope: &str,
        last: u64,
        payload: Bytes,
    ) -> Result<Answer<Published>, StoreError> {
        headers.insert(h::EXPECTED_LAST_SUBJECT_SEQUENCE, last.to_string().as_str());
        headers.insert(h::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, scope);
        api::publish(
            &self.inner.client,
            subject.as_str().to_owned(),
            headers,
            payload,
            self.inner.timeout,
        )
        .await
    }

    /// Publishes several events as one atomic batch (ADR-50): all are stored or none.
    async fn publish_batch(
        &self,
        subjects: &[Subject],
        headers: Vec<async_nats::HeaderMap>,
        events: &[NewEvent],
        scope: &str,
        last: u64,
    ) -> Result<Answer<Published>, StoreError> {
        let batch_id = uuid::Uuid::new_v4().simple().to_string();
        let count = events.len();
        let client = &self.inner.client;
        for (i, ((subject, mut headers), event)) in
            subjects.iter().zip(headers).zip(events).enumerate()
        {
            headers.insert(h::BATCH_ID, batch_id.as_str());
            headers.insert(h::BATCH_SEQUENCE, (i + 1).to_string().as_str());
            if i == 0 {
                headers.insert(h::EXPECTED_LAST_SUBJECT_SEQUENCE, last.to_string().as_str());
                headers.insert(h::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, scope);
            }
            if i + 1 == count {
                headers.insert(h::BATCH_COMMIT, "1");
                return api::publish(
                    client,
                    subject.as_str().to_owned(),
                    headers,
                    event.payload.clone(),
                    self.inner.timeout,
                )
                .await;
            }
            client
                .publish_with_headers(subject.as_str().to_owned(), headers, event.payload.clone())
                .await
                .map_err(|e| StoreError::with_source(StoreErrorKind::Connection, e))?;
        }
        Err(StoreError::new(StoreErrorKind::InvalidAppend(
            "no events to append".to_owned(),
        )))
    }
}

/// An append whose event id is already stored for another event: a reused id, not a retry.
fn reused_id(event: &NewEvent, sequence: u64) -> StoreError {
    StoreError::new(StoreErrorKind::InvalidAppend(format!(
        "event id {} is already used by another event (stream sequence {sequence}); \
         a retry must resend the same event, and a new event needs a new id",
        event.event_id
    )))
}

fn headers_len(headers: &async_nats::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, vs)| {
            vs.iter()
                .map(|v| k.to_string().len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum::<usize>()
        + 12
}

fn version_of(raw: &RawMessage) -> Result<u64, StoreError> {
    raw.headers
        .get(h::AGGREGATE_VERSION)
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .ok_or_else(|| {
            StoreError::new(StoreErrorKind::Decode {
                sequence: raw.sequence,
                reason: format!(
                    "message on {} has no valid {} header (written by another client?)",
                    raw.subject,
                    h::AGGREGATE_VERSION
                ),
            })
        })
}

#[async_trait]
impl EventStore for JetStreamEventStore {
    async fn append(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let result = self.append_unchecked(aggregate_id, expected, events).await;
        self.reclassify(result).await
    }

    async fn read_aggregate(
        &self,
        aggregate_id: &AggregateId,
        after_version: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_aggregate_after(aggregate_id, after_version, StreamSequence(0))
            .await
    }

    async fn read_aggregate_after(
        &self,
        aggregate_id: &AggregateId,
        after_version: u64,
        after_sequence: StreamSequence,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let result = self
            .read_aggregate_after_unchecked(aggregate_id, after_version, after_sequence)
            .await;
        self.reclassify(result).await
    }

    async fn read_aggregate_routed(
        &self,
        aggregate_id: &AggregateId,
        routing_subjects: &[&str],
        after_version: u64,
        after_sequence: StreamSequence,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let result = self
            .read_aggregate_routed_unchecked(
                aggregate_id,
                routing_subjects,
                after_version,
                after_sequence,
            )
            .await;
        self.reclassify(result).await
    }

    async fn aggregate_version(
        &self,
        aggregate_id: &AggregateId,
    ) -> Result<Option<u64>, StoreError> {
        let result = self.aggregate_version_unchecked(aggregate_id).await;
        self.reclassify(result).await
    }

    fn stream(&self, from: ReadFrom) -> EventStream<'_> {
        Box::pin(crate::jetstream::read::stream_all(self.clone(), from))
    }

    async fn last_sequence(&self) -> Result<StreamSequence, StoreError> {
        let result = self.last_sequence_unchecked().await;
        self.reclassify(result).await
    }
}

/// The store's operations before [`JetStreamEventStore::reclassify`].
impl JetStreamEventStore {
    async fn append_unchecked(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let (scope, subjects) = self.check_events(aggregate_id, &events)?;
        let mut retries = 0;
        // An append whose outcome the client lost (it reconnected meanwhile) is sent again
        // until this deadline: the same events with the same expectation, which the server
        // stores once (a retry that meets its own first attempt is recognised below).
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        loop {
            // A remembered position saves the lookup; the server's check makes it safe.
            let (position, last) = match self.cached(aggregate_id) {
                Some(p) if expected.accepts(Some(p.version)) => (Some(p), None),
                _ => {
                    let last = self.last(&scope).await?;
                    (last.as_ref().map(|l| l.position), last)
                }
            };
            let actual = position.map(|p| p.version);
            if !expected.accepts(actual) {
                if let Some(result) = self
                    .already_stored(aggregate_id, expected, &events, last)
                    .await?
                {
                    return Ok(result);
                }
                return Err(StoreError::new(StoreErrorKind::WrongExpectedVersion {
                    aggregate_id: aggregate_id.clone(),
                    expected,
                    actual,
                }));
            }
            let base = actual.unwrap_or(0);
            let last = position.map_or(0, |p| p.sequence);
            let mut headers = Vec::with_capacity(events.len());
            for (i, (event, subject)) in events.iter().zip(&subjects).enumerate() {
                headers.push(self.headers_for(
                    event,
                    subject,
                    aggregate_id,
                    base + 1 + i as u64,
                )?);
            }
            let outcome = if events.len() == 1 {
                let headers = headers.pop().unwrap_or_default();
                self.publish_one(
                    &subjects[0],
                    headers,
                    &scope,
                    last,
                    events[0].payload.clone(),
                )
                .await?
            } else {
                let _permit = self
                    .inner
                    .batches
                    .acquire()
                    .await
                    .map_err(|e| StoreError::with_source(StoreErrorKind::Connection, e))?;
                self.publish_batch(&subjects, headers, &events, &scope, last)
                    .await?
            };
            let outcome = match outcome {
                Answer::Got(outcome) => outcome,
                Answer::Reconnected if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(aggregate = %aggregate_id, "the client reconnected during an append; sending it again");
                    self.forget(aggregate_id);
                    continue;
                }
                Answer::Reconnected => {
                    return Err(StoreError::with_source(
                        StoreErrorKind::Connection,
                        "the client kept reconnecting while the append was sent; it may or may \
                         not be stored: send it again",
                    ))
                }
            };
            match outcome {
                Published::Stored {
                    seq,
                    duplicate: false,
                    count,
                } => {
                    let n = events.len() as u64;
                    if n > 1 && count != Some(n) {
                        return Err(StoreError::new(StoreErrorKind::Server {
                            code: 0,
                            description: format!(
                                "atomic batch of {n} events acknowledged with count {count:?}"
                            ),
                        }));
                    }
                    let version = base + n;
                    self.remember(
                        aggregate_id,
                        Position {
                            version,
                            sequence: seq,
                        },
                    );
                    return Ok(AppendResult {
                        sequences: (seq + 1 - n..=seq).map(StreamSequence).collect(),
                        version,
                        duplicate: false,
                    });
                }
                Published::Stored {
                    seq,
                    duplicate: true,
                    ..
                } => {
                    // The server recognised the event id: the event is stored at `seq`.
                    let raw = self.message_at(seq).await?.ok_or_else(|| {
                        StoreError::new(StoreErrorKind::Server {
                            code: 0,
                            description: format!(
                                "duplicate acknowledged at {seq}, but no message is there"
                            ),
                        })
                    })?;
                    if raw.subject != subjects[0].as_str() || raw.payload != events[0].payload {
                        return Err(reused_id(&events[0], seq));
                    }
                    let version = version_of(&raw)?;
                    return Ok(AppendResult {
                        sequences: vec![StreamSequence(seq)],
                        version,
                        duplicate: true,
                    });
                }
                Published::Refused(e)
                    if e.err_code == codes::WRONG_LAST_SEQUENCE
                        || e.err_code == codes::BATCH_DUPLICATE_MSG_ID =>
                {
                    // Someone else appended since the position was read, or (batch) these
                    // events are already stored. Read the truth and decide.
                    self.forget(aggregate_id);
                    let last = self.last(&scope).await?;
                    let actual = last.as_ref().map(|l| l.position.version);
                    if let Some(result) = self
                        .already_stored(aggregate_id, expected, &events, last)
                        .await?
                    {
                        return Ok(result);
                    }
                    if expected.accepts(actual) && retries < 32 {
                        retries += 1;
                        continue;
                    }
                    return Err(StoreError::new(StoreErrorKind::WrongExpectedVersion {
                        aggregate_id: aggregate_id.clone(),
                        expected,
                        actual,
                    }));
                }
                Published::Refused(e) => return Err(api::server_error(&e)),
            }
        }
    }

    async fn read_aggregate_after_unchecked(
        &self,
        aggregate_id: &AggregateId,
        after_version: u64,
        after_sequence: StreamSequence,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // The aggregate's literal subjects, from the subject index; then all of them read by
        // batched direct gets on one inbox. A wildcard filter over a big stream is slow; literal
        // subjects are not.
        let filter = format!("{}.*.*.{aggregate_id}", self.inner.config.domain());
        let (_, subjects) = api::stream_state(
            &self.inner.client,
            &self.inner.config.stream_name,
            Some(&filter),
            self.inner.timeout,
        )
        .await?;
        let messages = self
            .read_subjects(subjects.into_keys().collect(), after_sequence)
            .await?;
        Self::assemble(aggregate_id, messages, after_version)
    }

    async fn read_aggregate_routed_unchecked(
        &self,
        aggregate_id: &AggregateId,
        routing_subjects: &[&str],
        after_version: u64,
        after_sequence: StreamSequence,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let domain = self.inner.config.domain();
        let subjects: Vec<String> = routing_subjects
            .iter()
            .filter(|r| r.split('.').next() == Some(domain))
            .map(|r| Subject::for_event(r, aggregate_id).into_string())
            .collect();
        // The subjects are known: read them all at once, and, in parallel, the aggregate's last
        // event, which tells whether an event sits on a subject the caller did not name.
        let scope = format!("{domain}.*.*.{aggregate_id}");
        let (messages, last) = tokio::join!(
            self.read_subjects(subjects, after_sequence),
            self.position(&scope)
        );
        let last = last?.map_or(0, |p| p.version);
        let complete = match Self::assemble(aggregate_id, messages?, after_version) {
            Ok(events) => {
                let top = events.last().map_or(after_version, |e| e.aggregate_version);
                (top == last.max(after_version)).then_some(events)
            }
            Err(_) => None,
        };
        match complete {
            Some(events) => Ok(events),
            None => {
                self.read_aggregate_after_unchecked(aggregate_id, after_version, after_sequence)
                    .await
            }
        }
    }

    async fn aggregate_version_unchecked(
        &self,
        aggregate_id: &AggregateId,
    ) -> Result<Option<u64>, StoreError> {
        let scope = format!("{}.*.*.{aggregate_id}", self.inner.config.domain());
        let best = self.position(&scope).await?;
        Ok(best.map(|p| p.version))
    }

    async fn last_sequence_unchecked(&self) -> Result<StreamSequence, StoreError> {
        let (last, _) = api::stream_state(
            &self.inner.client,
            &self.inner.config.stream_name,
            None,
            self.inner.timeout,
        )
        .await?;
        Ok(StreamSequence(last))
    }

    /// "No responders" for an existing stream is not a missing stream: its leader is being
    /// elected, or its servers are down. One STREAM.INFO request tells the two apart, on the
    /// error path only.
    async fn reclassify<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let Err(e) = result else {
            return result;
        };
        let no_responders = matches!(e.kind(), StoreErrorKind::StreamNotFound)
            && std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<async_nats::RequestError>())
                .is_some_and(|r| r.kind() == async_nats::RequestErrorKind::NoResponders);
        if !no_responders {
            return Err(e);
        }
        let stream = &self.inner.config.stream_name;
        match api::stream_state(&self.inner.client, stream, None, self.inner.timeout).await {
            Err(info)
                if matches!(info.kind(), StoreErrorKind::StreamNotFound) && {
                    // The JetStream API itself answered that the stream is gone.
                    std::error::Error::source(&info).is_none()
                } =>
            {
                Err(e)
            }
            _ => Err(StoreError::with_source(
                StoreErrorKind::Unavailable {
                    stream: stream.clone(),
                },
                e,
            )),
        }
    }
}

impl JetStreamEventStore {
    /// Every message on the given literal subjects after `after`: one batched direct get per
    /// subject, all on one inbox, repeated for the subjects that had more than a page.
    async fn read_subjects(
        &self,
        subjects: Vec<String>,
        after: StreamSequence,
    ) -> Result<Vec<RawMessage>, StoreError> {
        let mut out = Vec::new();
        let (known, fast): (Vec<String>, Vec<String>) =
            subjects.into_iter().partition(|s| self.is_unparseable(s));
        let mut safe: Vec<(String, u64)> = known.into_iter().map(|s| (s, after.0 + 1)).collect();
        let mut round: Vec<(String, u64)> = fast.into_iter().map(|s| (s, after.0 + 1)).collect();
        while !round.is_empty() {
            let requests: Vec<DirectGet> = round
                .iter()
                .map(|(subject, from)| DirectGet {
                    seq: Some(*from),
                    next_by_subj: Some(subject.clone()),
                    batch: Some(PAGE),
                    ..DirectGet::default()
                })
                .collect();
            let (page, answer) = api::direct_batches(
                &self.inner.client,
                &self.inner.direct_subject,
                &requests,
                self.inner.timeout,
            )
            .await?;
            out.extend(page.messages);
            match answer {
                Answer::Got(()) => {
                    round = page
                        .pending
                        .into_iter()
                        .filter(|(_, (_, pending))| *pending > 0)
                        .map(|(subject, (last, _))| (subject, last + 1))
                        .collect();
                }
                // The client reconnected, perhaps because of a message on one of these
                // subjects that it cannot parse: each goes on through the JSON API from where
                // it got to.
                Answer::Reconnected => {
                    safe.extend(round.drain(..).map(|(subject, from)| {
                        let from = page
                            .pending
                            .get(&subject)
                            .map_or(from, |(last, _)| last + 1);
                        (subject, from)
                    }));
                }
            }
        }
        let reads = safe
            .iter()
            .map(|(subject, from)| self.read_subject_safely(subject, *from));
        for messages in futures::future::try_join_all(reads).await? {
            out.extend(messages);
        }
        Ok(out)
    }

    /// Every message on `subject` from sequence `from` on, one JSON message get each, up to and
    /// including the first one the client cannot parse (which is remembered, and which fails
    /// the load that reads it).
    async fn read_subject_safely(
        &self,
        subject: &str,
        mut from: u64,
    ) -> Result<Vec<RawMessage>, StoreError> {
        let mut out = Vec::new();
        while let Some(raw) = self
            .safe_get(&MsgGet {
                seq: Some(from),
                next_by_subj: Some(subject),
                ..MsgGet::default()
            })
            .await?
        {
            from = raw.sequence + 1;
            let defective = raw.defect.is_some();
            out.push(raw);
            if defective {
                self.mark_unparseable(subject);
                break;
            }
        }
        Ok(out)
    }

    /// Decodes an aggregate's messages in stream order and checks that the versions after
    /// `after_version` follow each other.
    fn assemble(
        aggregate_id: &AggregateId,
        mut messages: Vec<RawMessage>,
        after_version: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        messages.sort_by_key(|raw| raw.sequence);
        messages.dedup_by_key(|raw| raw.sequence);
        let mut out = Vec::with_capacity(messages.len());
        for raw in messages {
            let event = decode_stored(raw)?;
            if event.aggregate_version > after_version {
                out.push(event);
            }
        }
        let mut expected_version = after_version;
        for event in &out {
            expected_version += 1;
            if event.aggregate_version != expected_version {
                return Err(StoreError::new(StoreErrorKind::Decode {
                    sequence: event.stream_sequence.0,
                    reason: format!(
                        "aggregate {aggregate_id} has version {} where {expected_version} was expected",
                        event.aggregate_version
                    ),
                }));
            }
        }
        Ok(out)
    }
}

fn wanted_config(config: &StoreConfig) -> stream::Config {
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
    diffs
}

async fn ensure_stream(
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
