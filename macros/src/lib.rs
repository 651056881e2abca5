//! `#[derive(NatsEvent)]` and `#[derive(EntityId)]` for `cim-nats`, checked at compile time. Use
//! them through `cim_nats::NatsEvent` and `cim_nats::EntityId` (feature `derive`, on by default).

mod ast;
mod attr;
mod errors;
mod expand;
mod fallback;
mod id;
mod symbol;
mod valid;

/// Derives `cim_nats::NatsEvent`: a variant per event type, on `{domain}.{aggregate}.{operation}`.
///
/// - On the enum: `domain` (required), `aggregate` (default for the variants), and
///   `event_id = "field"`, `aggregate_id = "field"`, `identity = "field"`: the field every
///   struct variant has for it, named once instead of marked in every variant (prefer these
///   when every variant has the field; mark fields one by one when they differ).
/// - On a variant: `operation` (required), `aggregate`, `version` (default 1), `event_type`
///   (default: the variant's name), `upcast(from = N, with = path)` (repeatable; the `from`s
///   run without gaps up to `version - 1`): the function gets the whole stored JSON
///   (`{"Variant": {...}}`); with `fields = path` instead of `with`, it gets and returns only the
///   variant's content (`{...}`).
/// - On a field: `event_id` (an `EventId` or a `Uuid`: the store sets it when it appends the
///   event, see `EventId::derive`), `aggregate_id` (`Display`, e.g. a `Uuid`), `identity` (a
///   `MessageIdentity`: correlation, causation and actor; its message id is set to the event
///   id).
///
/// Besides the trait, each variant gets a subject filter constant, `{VARIANT}_EVENTS` (the
/// variant's name in capitals and underscores): `InfraEvent::COMPUTE_REGISTERED_EVENTS` is
/// `"infrastructure.compute.registered.*"`, for a subscriber's `subject` without a subject typed
/// by hand.
///
/// ```
/// use cim_nats::{EventId, NatsEvent, UpcastError};
/// use serde::{Deserialize, Serialize};
/// use serde_json::{json, Value};
///
/// #[derive(Serialize, Deserialize, NatsEvent)]
/// #[nats_event(domain = "infrastructure", aggregate = "compute")]
/// enum InfraEvent {
///     #[nats_event(operation = "registered")]
///     ComputeRegistered {
///         #[nats_event(event_id)] event_id: EventId,
///         #[nats_event(aggregate_id)] infra: uuid::Uuid,
///         host: String,
///     },
///     #[nats_event(aggregate = "network", operation = "defined", version = 2,
///                  upcast(from = 1, with = net_v1_to_v2))]
///     NetworkDefined { #[nats_event(event_id)] id: EventId, cidr: String },
///     #[nats_event(operation = "severed", event_type = "ConnectionSevered")]
///     Severed(#[nats_event(event_id)] EventId, String),
///     #[nats_event(aggregate = "policy", operation = "cleared")]
///     PolicyCleared,
/// }
///
/// fn net_v1_to_v2(mut v1: Value) -> Result<Value, UpcastError> {
///     let net = &mut v1["NetworkDefined"];
///     net["cidr"] = net.get("net").cloned().ok_or("no `net`")?;
///     Ok(v1)
/// }
///
/// assert_eq!(InfraEvent::SUBJECTS[1], "infrastructure.network.defined");
/// let v1 = json!({"NetworkDefined": {"id": EventId::new(), "net": "10.0.0.0/8"}});
/// let event = InfraEvent::decode("NetworkDefined", 1, &serde_json::to_vec(&v1).unwrap()).unwrap();
/// assert_eq!(event.routing_subject(), "infrastructure.network.defined");
/// assert_eq!(InfraEvent::COMPUTE_REGISTERED_EVENTS, "infrastructure.compute.registered.*");
/// ```
#[proc_macro_derive(NatsEvent, attributes(nats_event))]
pub fn derive_nats_event(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::derive(&input).into()
}

/// Derives a typed id from a tuple struct around one `Uuid`: `new()` (UUID v7, ordered by
/// creation time), `from_uuid`, `as_uuid`, `Default` (a new id), `From<Uuid>` both ways,
/// `FromStr` (error `cim_nats::IdParseError` naming the type and the input), `Display` (the
/// UUID), `Debug` (`OrderId(…)`), and serde as a plain UUID string. With
/// `#[entity_id(aggregate)]`, the id names an aggregate and converts into `AggregateId` (other
/// ids do not, so that one cannot be passed for an aggregate's by mistake). Derive `Clone`,
/// `Copy`, `PartialEq`, `Eq`, `Hash` (and `Ord`) yourself, as you need them.
///
/// ```
/// use cim_nats::{AggregateId, EntityId};
///
/// #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EntityId)]
/// #[entity_id(aggregate)]
/// pub struct OrderId(uuid::Uuid);
///
/// let id = OrderId::new();
/// let text = id.to_string();
/// assert_eq!(text.parse::<OrderId>().unwrap(), id);
/// assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
/// assert_eq!(AggregateId::from(id).as_str(), text);
/// assert_eq!(format!("{id:?}"), format!("OrderId({text})"));
/// assert!("42".parse::<OrderId>().unwrap_err().to_string().starts_with("invalid OrderId \"42\""));
/// ```
#[proc_macro_derive(EntityId, attributes(entity_id))]
pub fn derive_entity_id(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    id::derive(&input).into()
}
