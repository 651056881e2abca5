//! The two things most tests of a domain start with: a server and a store on it
//! ([`TestStore`]), and events stored the way another writer would store them ([`RawEvent`]).

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::envelope::StreamSequence;
use crate::headers as h;
use crate::jetstream::{JetStreamEventStore, StoreConfig};
use crate::subject::AggregateId;
use crate::testing::NatsServer;

/// A throwaway server, a client on it and an event store of one domain: the fixture at the top
/// of a test. The server is stopped and its store directory removed when this is dropped.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use cim_nats::testing::TestStore;
/// use cim_nats::EventStore;
///
/// let test = TestStore::start("library").await?;
/// assert_eq!(test.store.stream_name(), "LIBRARY_EVENTS");
/// assert_eq!(test.store.last_sequence().await?.0, 0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TestStore {
    /// The server (its URL, to kill or restart it).
    pub server: NatsServer,
    /// A client connected to it.
    pub client: async_nats::Client,
    /// The event store of the domain (stream `{DOMAIN}_EVENTS` on `{domain}.>`).
    pub store: JetStreamEventStore,
}

impl TestStore {
    /// Starts a server and opens the store of `domain` on it.
    ///
    /// # Errors
    ///
    /// The server could not be started, connected to, or the store set up.
    pub async fn start(domain: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Self::with_config(StoreConfig::for_domain(domain)).await
    }

    /// Starts a server and opens a store with `config` on it.
    ///
    /// # Errors
    ///
    /// As [`TestStore::start`].
    pub async fn with_config(
        config: StoreConfig,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let server = NatsServer::start()?;
        let client = server.connect().await?;
        let store = JetStreamEventStore::new(client.clone(), config).await?;
        Ok(Self {
            server,
            client,
            store,
        })
    }
}

/// An event stored as another writer would store it: the store's wire format written by hand
/// (for tests of upcasting old schema versions, or of events from clients in other languages).
/// Stored with a plain JetStream publish: no concurrency check.
///
/// ```no_run
/// # async fn run(client: async_nats::Client) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use cim_nats::testing::RawEvent;
///
/// // Version 3 of account acc-1, as schema version 1 of `Deposited` stored it.
/// let sequence = RawEvent::new("bank.account.deposited", "acc-1", 3)
///     .event_type("Deposited", 1)
///     .body(serde_json::json!({ "Deposited": { "amount": 5 } }))
///     .publish(&client)
///     .await?;
/// # let _ = sequence; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RawEvent {
    subject: String,
    headers: HeaderMap,
    body: Bytes,
}

impl RawEvent {
    /// Version `version` of aggregate `aggregate_id`, on routing subject
    /// `{domain}.{entity}.{operation}`: the store's headers (a new event id, the aggregate's
    /// type, id and version, the time, JSON), the event type taken from the operation until
    /// [`RawEvent::event_type`] says otherwise, schema version 1, an empty JSON object as body.
    ///
    /// # Panics
    ///
    /// If `aggregate_id` is not a valid subject token (a test's mistake).
    pub fn new(routing: &str, aggregate_id: impl AsRef<str>, version: u64) -> Self {
        let id = AggregateId::new(aggregate_id.as_ref())
            .unwrap_or_else(|e| panic!("a raw event's aggregate id: {e}"));
        let entity = routing.split('.').nth(1).unwrap_or_default();
        let operation = routing.split('.').nth(2).unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(h::MSG_ID, uuid::Uuid::now_v7().to_string().as_str());
        headers.insert(h::EVENT_TYPE, operation);
        headers.insert(h::EVENT_VERSION, "1");
        headers.insert(h::AGGREGATE_TYPE, entity);
        headers.insert(h::AGGREGATE_ID, id.as_str());
        headers.insert(h::AGGREGATE_VERSION, version.to_string().as_str());
        headers.insert(h::TIMESTAMP, chrono::Utc::now().to_rfc3339().as_str());
        headers.insert(h::CONTENT_TYPE, h::JSON);
        Self {
            subject: format!("{routing}.{id}"),
            headers,
            body: Bytes::from_static(b"{}"),
        }
    }

    /// Its event type and schema version.
    #[must_use]
    pub fn event_type(mut self, event_type: &str, schema_version: u32) -> Self {
        self.headers.insert(h::EVENT_TYPE, event_type);
        self.headers
            .insert(h::EVENT_VERSION, schema_version.to_string().as_str());
        self
    }

    /// Its event id (the `Nats-Msg-Id`).
    #[must_use]
    pub fn event_id(mut self, id: uuid::Uuid) -> Self {
        self.headers.insert(h::MSG_ID, id.to_string().as_str());
        self
    }

    /// Its body, as JSON.
    #[must_use]
    pub fn body(mut self, body: serde_json::Value) -> Self {
        self.body = Bytes::from(body.to_string());
        self
    }

    /// A header more (or another value for one of the store's).
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Stores it; returns its stream sequence.
    ///
    /// # Errors
    ///
    /// The publish or its acknowledgement failed.
    pub async fn publish(
        self,
        client: &async_nats::Client,
    ) -> Result<StreamSequence, Box<dyn std::error::Error + Send + Sync>> {
        let ack = async_nats::jetstream::new(client.clone())
            .publish_with_headers(self.subject, self.headers, self.body)
            .await?
            .await?;
        Ok(StreamSequence(ack.sequence))
    }
}
