//! The error type of every operation family, in the style of `async-nats`: an [`Error<Kind>`]
//! with a `kind()` to match on and the underlying cause kept as its `source()`. Each family's
//! kinds live beside its operations: [`crate::StoreErrorKind`] in `store.rs`, the set-up and
//! subscriber kinds in the JetStream modules.

use std::fmt;
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of one operation family, identified by its kind `K`.
///
/// Match on [`Error::kind`]; the lower-level cause, when there is one, is kept and returned by
/// [`std::error::Error::source`].
///
/// An error is `Clone` when its kind is (the cause is shared): one failure can be reported to
/// every caller it concerns.
pub struct Error<K> {
    kind: K,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl<K: Clone> Clone for Error<K> {
    fn clone(&self) -> Self {
        Self {
            kind: self.kind.clone(),
            source: self.source.clone(),
        }
    }
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
            source: Some(Arc::from(source.into())),
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
