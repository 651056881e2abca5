//! Ids that are UUIDs: the error of parsing one, for `#[derive(EntityId)]`.

/// A string that is not a valid id of a `#[derive(EntityId)]` type.
///
/// ```
/// use cim_nats::EntityId;
///
/// #[derive(Clone, Copy, PartialEq, Eq, Hash, EntityId)]
/// struct OrderId(uuid::Uuid);
///
/// let err = "not-a-uuid".parse::<OrderId>().unwrap_err();
/// assert_eq!(err.kind(), "OrderId");
/// assert_eq!(err.value(), "not-a-uuid");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {source}")]
pub struct IdParseError {
    kind: &'static str,
    value: String,
    source: uuid::Error,
}

impl IdParseError {
    /// An error for `value`, which is not an id of type `kind`.
    pub fn new(kind: &'static str, value: &str, source: uuid::Error) -> Self {
        Self {
            kind,
            value: value.to_owned(),
            source,
        }
    }

    /// The name of the id type that failed to parse, e.g. `"OrderId"`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The rejected input.
    pub fn value(&self) -> &str {
        &self.value
    }
}
