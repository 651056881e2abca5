//! Configuration of the JetStream stream that holds a domain's events.

use std::time::Duration;

use crate::jetstream::setup::{SetupError, SetupErrorKind};
use crate::subject::{validate_subject, validate_token};

/// Where the stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk (the default; survives a restart).
    #[default]
    File,
    /// In memory (lost when the server stops).
    Memory,
}

/// The stream of one or more domains' events, as the store creates (or expects) it.
///
/// The message and byte limits never drop history: the stream uses discard policy `New`, so when
/// one is reached appends fail with [`crate::StoreErrorKind::StreamFull`] instead of deleting
/// old events. `max_age` is different: it is retention, and JetStream deletes events older than
/// it whatever the discard policy. `None` means no limit; the default keeps every event forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The stream's name (no spaces, `.`, `*`, `>`).
    pub stream_name: String,
    /// The subjects the stream captures, e.g. `["infrastructure.>"]`.
    pub subjects: Vec<String>,
    /// Retention: events older than this are deleted by the server (`None`: keep forever, the
    /// default). Use it only for domains whose old history may go.
    pub max_age: Option<Duration>,
    /// Refuse appends once the stream holds this many events (`None`: no limit).
    pub max_messages: Option<u64>,
    /// Refuse appends once the stream holds this many bytes (`None`: no limit).
    pub max_bytes: Option<u64>,
    /// File or memory storage.
    pub storage: Storage,
    /// How long the server remembers event ids to drop a retried append
    /// (the store also recognises retries after this window).
    pub duplicate_window: Duration,
    /// Number of copies in a cluster (1, 3 or 5; 3 is the production answer).
    pub replicas: usize,
    /// Free text shown by `nats stream info`.
    pub description: Option<String>,
}

impl StoreConfig {
    /// The configuration for one domain: stream `{DOMAIN}_EVENTS` on subjects `{domain}.>`,
    /// file storage, kept forever, a 2-minute dedupe window, 1 replica.
    pub fn for_domain(domain: &str) -> Self {
        Self {
            stream_name: format!("{}_EVENTS", domain.to_uppercase().replace('-', "_")),
            subjects: vec![format!("{domain}.>")],
            max_age: None,
            max_messages: None,
            max_bytes: None,
            storage: Storage::File,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            description: Some(format!("{domain} events (cim-nats)")),
        }
    }

    /// The domain: the first token shared by every subject of the stream.
    pub fn domain(&self) -> &str {
        self.subjects
            .first()
            .and_then(|s| s.split('.').next())
            .unwrap_or_default()
    }

    /// Sets the stream name.
    #[must_use]
    pub fn with_stream_name(mut self, name: impl Into<String>) -> Self {
        self.stream_name = name.into();
        self
    }

    /// Sets the number of replicas.
    #[must_use]
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets the storage.
    #[must_use]
    pub fn with_storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// Checks names, subjects and limits.
    ///
    /// # Errors
    ///
    /// [`SetupErrorKind::InvalidConfig`] naming the problem.
    pub fn validate(&self) -> Result<(), SetupError> {
        let invalid = |why: String| Err(SetupError::new(SetupErrorKind::InvalidConfig(why)));
        if let Err(e) = validate_token(&self.stream_name) {
            return invalid(format!("stream name: {e}"));
        }
        if self.stream_name.contains('/') || self.stream_name.contains('\\') {
            return invalid(format!(
                "stream name {:?} contains a path separator",
                self.stream_name
            ));
        }
        if self.subjects.is_empty() {
            return invalid("no subjects".to_owned());
        }
        for s in &self.subjects {
            if let Err(e) = validate_subject(s, true) {
                return invalid(format!("subject: {e}"));
            }
        }
        // One store holds one domain: an aggregate's events are `{domain}.*.*.{id}`.
        let domain = self.domain();
        if domain == "*" || domain == ">" {
            return invalid(format!(
                "subjects must start with a literal domain token, not {domain:?}"
            ));
        }
        if let Some(other) = self
            .subjects
            .iter()
            .find(|s| s.split('.').next() != Some(domain))
        {
            return invalid(format!(
                "one store holds one domain: {other:?} is not under {domain:?}"
            ));
        }
        if !matches!(self.replicas, 1..=5) {
            return invalid(format!("replicas must be 1 to 5, not {}", self.replicas));
        }
        if self.max_messages == Some(0) || self.max_bytes == Some(0) {
            return invalid("a limit of 0 would refuse every event; use None for no limit".into());
        }
        if self.max_age == Some(Duration::ZERO) {
            return invalid("max_age of 0; use None to keep events forever".into());
        }
        if let Some(age) = self.max_age {
            if self.duplicate_window > age {
                return invalid("duplicate_window is longer than max_age".into());
            }
        }
        Ok(())
    }
}
