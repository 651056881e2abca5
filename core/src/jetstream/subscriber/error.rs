//! The errors of subscribers ([`SubscriberErrorKind`]): building one, subscribing, running,
//! shutting down.

use std::fmt;

use crate::error::Error;

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
    /// The server does not have JetStream enabled (start it with `-js`).
    JetStreamDisabled,
    /// The server refused with a JetStream error.
    Server {
        /// JetStream error code, 0 if none.
        code: u64,
        /// The server's description.
        description: String,
    },
    /// Talking to the server failed.
    Connection,
    /// The consumer group could not be joined (see [`GroupError`](crate::jetstream::group::GroupError)).
    Group(crate::jetstream::group::GroupError),
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
            Self::JetStreamDisabled => write!(
                f,
                "JetStream is not enabled on the server (start nats-server with -js)"
            ),
            Self::Server { code, description } => {
                write!(f, "server error {code}: {description}")
            }
            Self::Connection => write!(f, "connection to the server failed"),
            Self::Group(e) => write!(f, "{e}"),
        }
    }
}
