//! Setting things up on a server: the errors of it ([`SetupErrorKind`]), and the checks of the
//! server a store talks to (its version and JetStream).

use std::fmt;

use crate::error::Error;

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
    /// A KV bucket (snapshots, checkpoints) could not be opened or created; the source says
    /// why.
    Bucket {
        /// The bucket.
        bucket: String,
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
    /// The stream to attach to does not exist ([`crate::jetstream::JetStreamEventStore::attach`]).
    StreamNotFound {
        /// The stream's name.
        stream: String,
    },
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
            Self::Bucket { bucket } => write!(f, "KV bucket {bucket:?} could not be opened"),
            Self::Server { code, description } => {
                write!(f, "server error {code}: {description}")
            }
            Self::Connection => write!(f, "connection to the server failed"),
            Self::StreamNotFound { stream } => write!(f, "no stream {stream:?} on the server"),
        }
    }
}

/// The nats-server versions this crate accepts, as the error of a refused server says them.
///
/// - 2.12.14 or later on the 2.12 line, 2.14.4 or later on the 2.14 line, any 2.15.0 or later:
///   the store sends atomic batches whose messages carry
///   `Nats-Expected-Last-Subject-Sequence-Subject`, and the server checks such an expectation
///   correctly inside a batch only since 2.12.14 and 2.14.4 (nats-server commit 39a478eec,
///   "Atomic batch expected subject ownership"); 2.14.0 to 2.14.3 lack it, so a plain
///   "at least 2.12.14" would let them through.
/// - Everything older is refused: atomic batches with message ids need 2.12.1, and nats-server
///   2.9 silently ignores `Nats-Expected-Last-Subject-Sequence-Subject`, so a concurrency check
///   would pass when it must fail. 2.13 is not a release line of its own.
pub const ACCEPTED_SERVER_VERSIONS: &str =
    "2.12.14 or later on 2.12, 2.14.4 or later on 2.14, or 2.15.0 or later";

/// A parsed `major.minor.patch[-pre]` server version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Patch version.
    pub patch: u64,
    /// Whether this is a release (sorts after its own pre-releases).
    pub release: bool,
}

impl ServerVersion {
    /// Parses `2.15.1`, `v2.12.0-RC.3`, `2.11.0-dev`.
    pub fn parse(version: &str) -> Option<Self> {
        let v = version.trim().trim_start_matches('v');
        let (core, pre) = match v.split_once(['-', '+']) {
            Some((core, pre)) => (core, Some(pre)),
            None => (v, None),
        };
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().unwrap_or("0").parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            major,
            minor,
            patch,
            release: pre.is_none(),
        })
    }

    const fn release(major: u64, minor: u64, patch: u64) -> Self {
        Self {
            major,
            minor,
            patch,
            release: true,
        }
    }

    /// Is this version accepted ([`ACCEPTED_SERVER_VERSIONS`])? A pre-release counts as older
    /// than its release.
    pub fn is_supported(&self) -> bool {
        match (self.major, self.minor) {
            (2, 12) => *self >= Self::release(2, 12, 14),
            (2, 14) => *self >= Self::release(2, 14, 4),
            (major, minor) if (major, minor) >= (2, 15) => *self >= Self::release(2, 15, 0),
            _ => false,
        }
    }
}

/// Checks the server's version and JetStream flag from its `INFO`.
///
/// # Errors
///
/// [`SetupErrorKind::ServerNotSupported`] naming the version found and the versions accepted;
/// [`SetupErrorKind::JetStreamDisabled`].
pub fn check_server_info(info: &async_nats::ServerInfo) -> Result<(), SetupError> {
    let supported = ServerVersion::parse(&info.version).is_some_and(|v| v.is_supported());
    if !supported {
        return Err(SetupError::new(SetupErrorKind::ServerNotSupported {
            found: info.version.clone(),
            accepted: ACCEPTED_SERVER_VERSIONS,
        }));
    }
    if !info.jetstream {
        return Err(SetupError::new(SetupErrorKind::JetStreamDisabled));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: &str) -> bool {
        ServerVersion::parse(v).unwrap().is_supported()
    }

    #[test]
    fn the_accepted_lines() {
        for v in [
            "2.12.14", "v2.12.15", "2.14.4", "2.14.9", "2.15.0", "2.15.1", "2.16.0", "3.0",
        ] {
            assert!(ok(v), "{v} is accepted");
        }
        for v in [
            "2.9.10",
            "2.11.9",
            "2.12.0",
            "2.12.1",
            "2.12.13",
            "2.12.14-RC.1",
            "2.13.0",
            "2.13.5",
            "2.14.0",
            "2.14.3",
            "2.14.4-RC.2",
            "2.15.0-RC.1",
        ] {
            assert!(!ok(v), "{v} is refused");
        }
        assert!(ServerVersion::parse("garbage").is_none());
        assert!(ServerVersion::parse("").is_none());
    }
}
