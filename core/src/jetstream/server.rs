//! Checks of the server a store talks to.

use crate::error::{SetupError, SetupErrorKind};

/// The oldest nats-server this crate supports: 2.12.1 stores atomic batches with message ids
/// and honours `Nats-Expected-Last-Subject-Sequence-Subject` (2.9 silently ignores it, which would
/// let a concurrency check pass when it must fail).
pub const MIN_SERVER_VERSION: &str = "2.12.1";

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

    /// The minimum supported version.
    pub fn minimum() -> Self {
        Self {
            major: 2,
            minor: 12,
            patch: 1,
            release: true,
        }
    }

    /// Is this version supported?
    pub fn is_supported(&self) -> bool {
        *self >= Self::minimum()
    }
}

/// Checks the server's version and JetStream flag from its `INFO`.
///
/// # Errors
///
/// [`SetupErrorKind::ServerTooOld`] naming the version found and the minimum;
/// [`SetupErrorKind::JetStreamDisabled`].
pub fn check_server_info(info: &async_nats::ServerInfo) -> Result<(), SetupError> {
    let supported = ServerVersion::parse(&info.version).is_some_and(|v| v.is_supported());
    if !supported {
        return Err(SetupError::new(SetupErrorKind::ServerTooOld {
            found: info.version.clone(),
            minimum: MIN_SERVER_VERSION,
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

    #[test]
    fn versions_compare() {
        let min = ServerVersion::minimum();
        assert!(ServerVersion::parse("2.15.1").unwrap() > min);
        assert!(ServerVersion::parse("v2.12.1").unwrap() == min);
        assert!(ServerVersion::parse("2.12.1-RC.2").unwrap() < min);
        assert!(ServerVersion::parse("2.12.0").unwrap() < min);
        assert!(ServerVersion::parse("2.9.10").unwrap() < min);
        assert!(ServerVersion::parse("3.0").unwrap() > min);
        assert!(ServerVersion::parse("garbage").is_none());
        assert!(ServerVersion::parse("").is_none());
    }
}
