//! [`JetStreamEventStore`]: the event store on a JetStream stream.
//!
//! The store's jobs are its files: [`append`] (the append protocol: expectations, atomic
//! batches, recognising retries), [`load`] (reading one aggregate, and the last event of one),
//! [`position`] (the positions of recently appended aggregates, so an append skips a lookup),
//! [`provision`] (waiting for the connection, checking the server, creating the stream).
//! What a stored message looks like is `codec.rs`'s business alone.

mod append;
mod load;
mod multi;
mod position;
mod provision;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::Client;
use async_trait::async_trait;

use crate::envelope::{StoredEvent, StreamSequence};
use crate::jetstream::api;
use crate::jetstream::config::StoreConfig;
use crate::jetstream::setup::check_server_info;
use crate::jetstream::setup::{SetupError, SetupErrorKind};
use crate::store::{
    AggregateAppend, AppendResult, EventStore, EventStream, ExpectedVersion, NewEvent, ReadFrom,
};
use crate::store::{StoreError, StoreErrorKind};
use crate::subject::AggregateId;

use position::Positions;
pub(crate) use provision::wait_connected;

/// Atomic batches one store sends at once (the server's limit per stream is 50).
const BATCHES_IN_FLIGHT: usize = 50;

/// How long setting a store up waits for a client that is not connected yet.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

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
    client: api::Conn,
    context: jetstream::Context,
    config: StoreConfig,
    direct_subject: String,
    timeout: Duration,
    max_payload: usize,
    positions: Positions,
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
        api::permissions::setup_through(
            &client,
            &stream_info,
            provision::ensure_stream(&context, &config),
        )
        .await?;
        Ok(Self::over(client, context, config, info.max_payload))
    }

    /// Attaches to the existing stream `stream_name` as it is, without creating or changing
    /// it: for tools that read any domain's stream (its configuration is read from the server;
    /// the domain is its subjects' first token).
    ///
    /// # Errors
    ///
    /// [`SetupErrorKind::StreamNotFound`] when there is no such stream; as
    /// [`JetStreamEventStore::new`] for the server and the connection.
    pub async fn attach(client: Client, stream_name: &str) -> Result<Self, SetupError> {
        wait_connected(&client, CONNECT_WAIT).await?;
        let info = client.server_info();
        check_server_info(&info)?;
        let context = jetstream::new(client.clone());
        let stream_info = format!("$JS.API.STREAM.INFO.{stream_name}");
        let found = api::permissions::setup_through(&client, &stream_info, async {
            match context.get_stream(stream_name).await {
                Ok(mut stream) => stream
                    .info()
                    .await
                    .map(|i| Some(i.config.clone()))
                    .map_err(|e| SetupError::with_source(SetupErrorKind::Connection, e)),
                Err(e) if api::stream_missing(&e) => Ok(None),
                Err(e) => Err(SetupError::with_source(SetupErrorKind::Connection, e)),
            }
        })
        .await?;
        let Some(have) = found else {
            return Err(SetupError::new(SetupErrorKind::StreamNotFound {
                stream: stream_name.to_owned(),
            }));
        };
        let config = StoreConfig {
            stream_name: have.name.clone(),
            subjects: have.subjects.clone(),
            max_age: (!have.max_age.is_zero()).then_some(have.max_age),
            max_messages: u64::try_from(have.max_messages).ok(),
            max_bytes: u64::try_from(have.max_bytes).ok(),
            storage: match have.storage {
                jetstream::stream::StorageType::Memory => crate::jetstream::Storage::Memory,
                jetstream::stream::StorageType::File => crate::jetstream::Storage::File,
            },
            duplicate_window: have.duplicate_window,
            replicas: have.num_replicas,
            description: have.description.clone(),
        };
        Ok(Self::over(client, context, config, info.max_payload))
    }

    fn over(
        client: Client,
        context: jetstream::Context,
        config: StoreConfig,
        max_payload: usize,
    ) -> Self {
        let direct_subject = format!("$JS.API.DIRECT.GET.{}", config.stream_name);
        Self {
            inner: Arc::new(Inner {
                client: api::Conn::new(client),
                context,
                config,
                direct_subject,
                timeout: Duration::from_secs(10),
                max_payload,
                positions: Positions::default(),
                unparseable: Mutex::new(std::collections::HashSet::new()),
                batches: tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT),
            }),
        }
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
}

#[async_trait]
#[async_trait]
impl EventStore for JetStreamEventStore {
    async fn append(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        JetStreamEventStore::append(self, aggregate_id, expected, events).await
    }

    async fn append_multi(
        &self,
        parts: Vec<AggregateAppend>,
    ) -> Result<Vec<AppendResult>, StoreError> {
        JetStreamEventStore::append_multi(self, parts).await
    }

    async fn last_event(
        &self,
        aggregate_id: &AggregateId,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let result = self.last_event_inner(aggregate_id).await;
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
        let started = std::time::Instant::now();
        let result = self
            .read_aggregate_after_inner(aggregate_id, after_version, after_sequence)
            .await;
        crate::metrics::load(self.stream_name(), started.elapsed());
        self.reclassify(result).await
    }

    async fn read_aggregate_routed(
        &self,
        aggregate_id: &AggregateId,
        routing_subjects: &[&str],
        after_version: u64,
        after_sequence: StreamSequence,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let started = std::time::Instant::now();
        let result = self
            .read_aggregate_routed_inner(
                aggregate_id,
                routing_subjects,
                after_version,
                after_sequence,
            )
            .await;
        crate::metrics::load(self.stream_name(), started.elapsed());
        self.reclassify(result).await
    }

    async fn aggregate_version(
        &self,
        aggregate_id: &AggregateId,
    ) -> Result<Option<u64>, StoreError> {
        let result = self.aggregate_version_inner(aggregate_id).await;
        self.reclassify(result).await
    }

    fn stream(&self, from: ReadFrom) -> EventStream<'_> {
        Box::pin(crate::jetstream::read::stream_all(
            self.inner.client.client().clone(),
            self.inner.config.stream_name.clone(),
            self.inner.timeout,
            from,
        ))
    }

    async fn last_sequence(&self) -> Result<StreamSequence, StoreError> {
        let result = self.last_sequence_inner().await;
        self.reclassify(result).await
    }
}

impl JetStreamEventStore {
    /// The store of the domain of events `E` (stream `{DOMAIN}_EVENTS` on `{domain}.>`, created if
    /// it does not exist). With [`JetStreamEventStore::repository`],
    /// [`JetStreamEventStore::projection`], [`JetStreamEventStore::read_model`] and
    /// [`JetStreamEventStore::subscriber`], a domain's wiring is a line each:
    ///
    /// ```no_run
    /// # use cim_nats::{Aggregate, EventId, NatsEvent, Projection, ProjectionError, Envelope};
    /// # use cim_nats::jetstream::{JetStreamEventStore, ProjectionOptions};
    /// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, NatsEvent)]
    /// # #[nats_event(domain = "shop", aggregate = "order")]
    /// # enum OrderEvent { #[nats_event(operation = "placed")] Placed { #[nats_event(event_id)] id: EventId } }
    /// # #[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
    /// # struct Order;
    /// # impl Aggregate for Order {
    /// #     type Event = OrderEvent; type Command = (); type Error = std::io::Error;
    /// #     fn handle(&self, _: ()) -> Result<Vec<OrderEvent>, std::io::Error> { Ok(vec![]) }
    /// #     fn apply(&mut self, _: &OrderEvent) {}
    /// # }
    /// # #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
    /// # struct Orders(u64);
    /// # #[async_trait::async_trait]
    /// # impl Projection for Orders {
    /// #     type Event = OrderEvent;
    /// #     const NAME: &'static str = "orders";
    /// #     async fn apply(&mut self, _: &Envelope<OrderEvent>) -> Result<(), ProjectionError> { self.0 += 1; Ok(()) }
    /// # }
    /// # async fn run(client: async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let store = JetStreamEventStore::for_events::<OrderEvent>(client).await?;
    /// let orders = store.repository::<Order>().with_cache(1_000);
    /// let totals = store.projection::<Orders>(ProjectionOptions::default()).await?;
    /// # let _ = (orders, totals); Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`JetStreamEventStore::new`].
    pub async fn for_events<E: crate::event::NatsEvent>(
        client: Client,
    ) -> Result<Self, SetupError> {
        Self::new(client, StoreConfig::for_domain(E::DOMAIN)).await
    }

    /// A repository of aggregates `A` on this store (no cache or snapshots; add them with the
    /// repository's `with_*` methods).
    pub fn repository<A: crate::aggregate::Aggregate>(&self) -> crate::repository::Repository<A> {
        crate::repository::Repository::new(self.clone())
    }

    /// Starts projection `P` on this store ([`crate::jetstream::ProjectionRunner::start`]).
    ///
    /// # Errors
    ///
    /// As [`crate::jetstream::ProjectionRunner::start`].
    pub async fn projection<P>(
        &self,
        options: crate::jetstream::ProjectionOptions,
    ) -> Result<crate::jetstream::ProjectionHandle<P>, crate::projection::ProjectionError>
    where
        P: crate::projection::Projection + Default + serde::Serialize + serde::de::DeserializeOwned,
    {
        crate::jetstream::ProjectionRunner::start::<P>(self, options).await
    }

    /// Starts read model `projection` on this store ([`crate::jetstream::ReadModelRunner::start`]).
    ///
    /// # Errors
    ///
    /// As [`crate::jetstream::ReadModelRunner::start`].
    pub async fn read_model<P: crate::jetstream::KeyedProjection>(
        &self,
        projection: P,
        options: crate::jetstream::ReadModelOptions,
    ) -> Result<crate::jetstream::ReadModelHandle<P>, crate::projection::ProjectionError> {
        crate::jetstream::ReadModelRunner::start(self, projection, options).await
    }

    /// A subscriber builder on this store's client, for a subscriber of this domain's events
    /// (give it the subjects, e.g. a variant's `{VARIANT}_EVENTS` filter, and a handler).
    pub fn subscriber(&self) -> crate::jetstream::EventSubscriberBuilder {
        crate::jetstream::EventSubscriberBuilder::new().client(self.client().clone())
    }

    /// [`EventStore::append`] without the box a trait object's future needs: the same append,
    /// for callers that hold the store by its type.
    ///
    /// # Errors
    ///
    /// As [`EventStore::append`].
    pub async fn append(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let started = std::time::Instant::now();
        let result = self.append_inner(aggregate_id, expected, events).await;
        let result = self.reclassify(result).await;
        self.record_append(started, result.as_ref().err());
        result
    }

    /// Records an append's time and outcome (`crate::metrics`).
    fn record_append(&self, started: std::time::Instant, error: Option<&StoreError>) {
        use crate::metrics::AppendEnd;
        let end = match error.map(StoreError::kind) {
            None => AppendEnd::Stored,
            Some(StoreErrorKind::WrongExpectedVersion { .. }) => AppendEnd::Conflict,
            Some(_) => AppendEnd::Failed,
        };
        crate::metrics::append(self.stream_name(), started.elapsed(), end);
    }

    /// [`EventStore::append_multi`] without the box a trait object's future needs.
    ///
    /// # Errors
    ///
    /// As [`EventStore::append_multi`].
    pub async fn append_multi(
        &self,
        parts: Vec<AggregateAppend>,
    ) -> Result<Vec<AppendResult>, StoreError> {
        let started = std::time::Instant::now();
        let result = self.append_multi_inner(parts).await;
        let result = self.reclassify(result).await;
        self.record_append(started, result.as_ref().err());
        result
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
