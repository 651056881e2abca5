//! The keys accepted inside `#[nats_event(...)]`.

/// The attribute's own name.
pub(crate) const NATS_EVENT: &str = "nats_event";

/// Enum: the first subject token (required). Variant: none.
pub(crate) const DOMAIN: &str = "domain";
/// Enum: default second subject token. Variant: the second subject token.
pub(crate) const AGGREGATE: &str = "aggregate";
/// Enum: `event_id = "field"`, a named field of every struct variant. Field: marks the event id.
pub(crate) const EVENT_ID: &str = "event_id";
/// Variant: the third subject token (required).
pub(crate) const OPERATION: &str = "operation";
/// Variant: the current schema version (default 1).
pub(crate) const VERSION: &str = "version";
/// Variant: the event type name (default: the variant's name).
pub(crate) const EVENT_TYPE: &str = "event_type";
/// Variant: `upcast(from = N, with = path)`, repeatable.
pub(crate) const UPCAST: &str = "upcast";
/// Inside `upcast(...)`: the schema version the upcaster reads.
pub(crate) const FROM: &str = "from";
/// Inside `upcast(...)`: the upcaster function, given the whole stored JSON.
pub(crate) const WITH: &str = "with";
/// Inside `upcast(...)`: the upcaster function, given only the variant's content.
pub(crate) const FIELDS: &str = "fields";
/// Enum: `aggregate_id = "field"`, a named field of every struct variant. Field: marks the
/// aggregate id.
pub(crate) const AGGREGATE_ID: &str = "aggregate_id";
/// Enum: `identity = "field"`, a named field of every struct variant. Field: marks the identity
/// (a `MessageIdentity`) of the event: correlation, causation, actor.
pub(crate) const IDENTITY: &str = "identity";

/// Keys accepted on the enum.
pub(crate) const ENUM_KEYS: &[&str] = &[DOMAIN, AGGREGATE, EVENT_ID, AGGREGATE_ID, IDENTITY];
/// Keys accepted on a variant.
pub(crate) const VARIANT_KEYS: &[&str] = &[AGGREGATE, OPERATION, VERSION, EVENT_TYPE, UPCAST];
/// Keys accepted on a field.
pub(crate) const FIELD_KEYS: &[&str] = &[EVENT_ID, AGGREGATE_ID, IDENTITY];
/// Keys accepted inside `upcast(...)`.
pub(crate) const UPCAST_KEYS: &[&str] = &[FROM, WITH, FIELDS];
