//! Errors, one type per operation family, in the style of `async-nats`: an [`Error<Kind>`] with a
//! `kind()` to match on and the underlying cause kept as its `source()`.

use std::fmt;

use crate::store::ExpectedVersion;
use crate::subject::AggregateId;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of one operation family, identified by its kind `K`.
///
/// Match on [`Error::kind`]; the lower-level cause, when there is one, is kept and returned by
/// [`std::error::Error::source`].
pub struct Error<K> {
    kind: K,
    source: Option<BoxError>,
}

impl<K> Error<K> {
    /// An error of the given kind, with no underlying cause.
    pub fn new(kind: K) -> Self {
        Self { kind, source: None }
    }

    /// An error of the given kind caused by `source`.
    pub fn with_source<S>(kind: K, source: S) -> Self
    where
        S: Into<BoxError>,
    {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// The kind of this error, to match on.
    pub fn kind(&self) -> &K {
        &self.kind
    }

    /// Consumes the error, returning its kind.
    pub fn into_kind(self) -> K {
        self.kind
    }
}

impl<K: fmt::Display> fmt::Display for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl<K: fmt::Debug> fmt::Debug for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl<K: fmt::Debug + fmt::Display> std::error::Error for Error<K> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl<K> From<K> for Error<K> {
    fn from(kind: K) -> Self {
        Self::new(kind)
    }
}

/// Errors of event-store operations: appends and reads.
pub type StoreError = Error<StoreErrorKind>;

/// What went wrong in an event-store operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The aggregate was not at the version the caller expected: another writer got there first.
    WrongExpectedVersion {
        /// The aggregate.
        aggregate_id: AggregateId,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The aggregate's version when the append was refused (`None`: it has no events).
        actual: Option<u64>,
    },
    /// A subject or token built from the caller's data is not a valid NATS subject token.
    InvalidSubject,
    /// The append was empty, mixed aggregates, or was otherwise malformed.
    InvalidAppend(String),
    /// An event could not be encoded to JSON.
    Encode,
    /// A stored message could not be decoded into an event.
    Decode {
        /// Stream sequence of the message.
        sequence: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The event is larger than the server's `max_payload`.
    PayloadTooLarge {
        /// Size of the message (payload and headers) in bytes.
        size: usize,
        /// The server's limit in bytes.
        max: usize,
    },
    /// The stream reached one of its limits; with discard policy `New` it refuses appends
    /// rather than dropping old history.
    StreamFull,
    /// The stream does not exist (it was deleted after the store was created).
    StreamNotFound,
    /// The stream exists, but nothing took the request: its leader is being elected, or the
    /// servers holding it are down (or its subjects were changed under the store). Transient
    /// in the first two cases: retry ([`StoreError::is_transient`]).
    Unavailable {
        /// The stream.
        stream: String,
    },
    /// The connection's permissions do not allow this subject.
    PermissionDenied(String),
    /// The server did not answer in time.
    TimedOut,
    /// The server refused the operation with a JetStream error.
    Server {
        /// JetStream error code (`err_code`), 0 if the server gave none.
        code: u64,
        /// The server's description.
        description: String,
    },
    /// Talking to the server failed.
    Connection,
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongExpectedVersion {
                aggregate_id,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "wrong expected version of aggregate {aggregate_id}: expected {expected}, actual "
                )?;
                match actual {
                    Some(v) => write!(f, "{v}"),
                    None => write!(f, "no stream"),
                }
            }
            Self::InvalidSubject => write!(f, "invalid subject"),
            Self::InvalidAppend(why) => write!(f, "invalid append: {why}"),
            Self::Encode => write!(f, "event could not be encoded"),
            Self::Decode { sequence, reason } => {
                write!(f, "stored message at sequence {sequence} could not be decoded: {reason}")
            }
            Self::PayloadTooLarge { size, max } => write!(
                f,
                "message of {size} bytes exceeds the server's max_payload of {max} bytes"
            ),
            Self::StreamFull => write!(
                f,
                "stream is full: a limit (max messages, bytes or age) is reached and the store never drops history"
            ),
            Self::StreamNotFound => write!(f, "stream not found"),
            Self::Unavailable { stream } => write!(
                f,
                "stream {stream} exists but nothing answered for it (no leader at the moment, \
                 or its servers are down); retry"
            ),
            Self::PermissionDenied(subject) => {
                write!(f, "permission denied for subject {subject:?}")
            }
            Self::TimedOut => write!(f, "timed out waiting for the server"),
            Self::Server { code, description } => {
                write!(f, "server error {code}: {description}")
            }
            Self::Connection => write!(f, "connection to the server failed"),
        }
    }
}

impl StoreError {
    /// Is this worth retrying as it is: the server did not answer in time, the connection
    /// failed, or the stream has no leader at the moment? A version conflict is not (decide
    /// again on a fresh load), nor is invalid input.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind(),
            StoreErrorKind::TimedOut
                | StoreErrorKind::Connection
                | StoreErrorKind::Unavailable { .. }
        )
    }
}

/// Errors of setting a store up: connecting, checking the server, creating the stream.
pub type SetupError = Error<SetupErrorKind>;

/// What went wrong while setting up a store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetupErrorKind {
    /// The server's version is not one this crate accepts
    /// ([`crate::jetstream::ACCEPTED_SERVER_VERSIONS`]).
    ServerNotSupported {
        /// The version the server reported (empty if it reported none).
        found: String,
        /// The versions accepted.
        accepted: &'static str,
    },
    /// The client has not connected to a server (yet): a client made with
    /// `ConnectOptions::retry_on_initial_connect` before any server answered.
    NotConnected {
        /// How long the set-up waited for the connection.
        waited: std::time::Duration,
    },
    /// The server does not have JetStream enabled (start it with `-js`).
    JetStreamDisabled,
    /// The stream exists with settings that differ from the configuration; it is left unchanged.
    StreamConfigMismatch {
        /// The stream's name.
        stream: String,
        /// Which setting differs, and how.
        differences: Vec<String>,
    },
    /// The configured subjects overlap those of another stream (server error 10065).
    SubjectsOverlap {
        /// The configured stream.
        stream: String,
    },
    /// The configuration itself is invalid.
    InvalidConfig(String),
    /// The connection's user is not permitted what setting up needs (publishing a JetStream
    /// API request, or receiving its reply), as its permissions say; the error's source names
    /// the user and the rule.
    PermissionDenied {
        /// The refused subject.
        subject: String,
    },
    /// The server refused with a JetStream error.
    Server {
        /// JetStream error code, 0 if none.
        code: u64,
        /// The server's description.
        description: String,
    },
    /// Talking to the server failed.
    Connection,
}

impl fmt::Display for SetupErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServerNotSupported { found, accepted } => write!(
                f,
                "nats-server {found} is not supported: cim-nats needs nats-server {accepted} \
                 (older servers mis-check or ignore Nats-Expected-Last-Subject-Sequence-Subject \
                 inside atomic batches, or cannot store atomic batches)"
            ),
            Self::NotConnected { waited } => write!(
                f,
                "the NATS client is not connected to a server (waited {waited:?}); check the \
                 server address and that the server runs"
            ),
            Self::JetStreamDisabled => write!(
                f,
                "JetStream is not enabled on the server (start nats-server with -js)"
            ),
            Self::StreamConfigMismatch {
                stream,
                differences,
            } => write!(
                f,
                "stream {stream:?} exists with other settings ({}); it was left unchanged",
                differences.join("; ")
            ),
            Self::SubjectsOverlap { stream } => write!(
                f,
                "the subjects of stream {stream:?} overlap those of another stream (server error 10065)"
            ),
            Self::PermissionDenied { subject } => {
                write!(f, "permission denied for subject {subject:?}")
            }
            Self::InvalidConfig(why) => write!(f, "invalid store configuration: {why}"),
            Self::Server { code, description } => {
                write!(f, "server error {code}: {description}")
            }
            Self::Connection => write!(f, "connection to the server failed"),
        }
    }
}

/// Errors of subscribers: building one, subscribing, running, shutting down.
pub type SubscriberError = Error<SubscriberErrorKind>;

/// What went wrong in a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriberErrorKind {
    /// The builder was given no NATS client.
    MissingClient,
    /// The builder was given no handler.
    MissingHandler,
    /// The builder was given no subject.
    NoSubjects,
    /// An option is invalid (a subject, a durable name, a limit).
    InvalidConfig(String),
    /// No JetStream stream captures this subject: nothing would ever be delivered.
    NoStream {
        /// The subject.
        subject: String,
    },
    /// The consumer could not be created or updated on its stream.
    ConsumerSetup {
        /// The stream.
        stream: String,
        /// What the server said.
        description: String,
    },
    /// The dead-letter stream could not be created, or exists with subjects that do not
    /// capture the dead-letter subjects.
    DeadLetterSetup {
        /// The dead-letter stream.
        stream: String,
        /// What is wrong.
        description: String,
    },
    /// The consumer was deleted (or its stream) while the subscription ran.
    ConsumerDeleted {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
    },
    /// Pulling messages from the consumer failed and cannot go on.
    Pull {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
    },
    /// Handlers were still running when the shutdown timeout elapsed; they were stopped and
    /// their events will be delivered again.
    ShutdownTimedOut {
        /// How many handlers were stopped.
        unfinished: usize,
    },
    /// The subscription's task ended abnormally (it panicked or its runtime shut down).
    TaskFailed,
    /// The connection's user is not permitted what the subscription needs (creating its
    /// consumer, or receiving the events on their inbox); the error's source, when the
    /// permissions could be read, names the user and the rule.
    PermissionDenied {
        /// The refused subject.
        subject: String,
    },
    /// The server refused with a JetStream error.
    Server {
        /// JetStream error code, 0 if none.
        code: u64,
        /// The server's description.
        description: String,
    },
    /// Talking to the server failed.
    Connection,
}

impl fmt::Display for SubscriberErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingClient => write!(f, "subscriber has no NATS client (call .client(..))"),
            Self::MissingHandler => write!(f, "subscriber has no handler (call .handler(..))"),
            Self::NoSubjects => write!(f, "subscriber has no subject (call .subject(..))"),
            Self::InvalidConfig(why) => write!(f, "invalid subscriber configuration: {why}"),
            Self::NoStream { subject } => write!(
                f,
                "no JetStream stream captures subject {subject:?}: create the domain's event \
                 store (stream) first, or check the subject"
            ),
            Self::ConsumerSetup {
                stream,
                description,
            } => write!(
                f,
                "consumer on stream {stream:?} could not be created: {description}"
            ),
            Self::DeadLetterSetup {
                stream,
                description,
            } => write!(f, "dead-letter stream {stream:?}: {description}"),
            Self::ConsumerDeleted { stream, consumer } => write!(
                f,
                "consumer {consumer:?} on stream {stream:?} was deleted while subscribed"
            ),
            Self::Pull { stream, consumer } => write!(
                f,
                "pulling from consumer {consumer:?} on stream {stream:?} failed"
            ),
            Self::ShutdownTimedOut { unfinished } => write!(
                f,
                "shutdown timed out with {unfinished} handler(s) still running; their events \
                 will be delivered again"
            ),
            Self::PermissionDenied { subject } => {
                write!(f, "permission denied for subject {subject:?}")
            }
            Self::TaskFailed => write!(f, "the subscription task ended abnormally"),
            Self::Server { code, description } => {
                write!(f, "server error {code}: {description}")
            }
            Self::Connection => write!(f, "connection to the server failed"),
        }
    }
}
