//! `#[derive(EntityId)]`: what a UUID newtype gets.

use std::collections::HashSet;

use cim_nats::{AggregateId, EntityId, IdParseError};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EntityId)]
#[entity_id(aggregate)]
struct OrderId(uuid::Uuid);

#[derive(Clone, Copy, PartialEq, Eq, Hash, EntityId)]
struct LineId(uuid::Uuid);

#[test]
fn new_ids_are_unique_version_7_and_default_is_new() {
    let a = OrderId::new();
    assert_eq!(a.as_uuid().get_version_num(), 7);
    let ids: HashSet<LineId> = (0..1000).map(|_| LineId::default()).collect();
    assert_eq!(ids.len(), 1000);
}

#[test]
fn text_serde_and_uuid_round_trips() {
    let id = OrderId::new();
    let text = id.to_string();
    assert_eq!(text, id.as_uuid().hyphenated().to_string());
    assert_eq!(text.parse::<OrderId>().unwrap(), id);
    // Any form Uuid::parse_str takes.
    assert_eq!(
        id.as_uuid()
            .simple()
            .to_string()
            .parse::<OrderId>()
            .unwrap(),
        id
    );
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(json, format!("\"{text}\""));
    assert_eq!(serde_json::from_str::<OrderId>(&json).unwrap(), id);
    let uuid: uuid::Uuid = id.into();
    assert_eq!(OrderId::from(uuid), id);
    assert_eq!(OrderId::from_uuid(uuid), id);
    assert_eq!(format!("{id:?}"), format!("OrderId({text})"));
}

#[test]
fn bad_text_and_json_are_errors_naming_the_type() {
    let err: IdParseError = "order-42".parse::<OrderId>().unwrap_err();
    assert_eq!(err.kind(), "OrderId");
    assert_eq!(err.value(), "order-42");
    assert!(
        err.to_string()
            .starts_with("invalid OrderId \"order-42\": "),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());
    assert!(serde_json::from_str::<LineId>("\"order-42\"").is_err());
    assert!(serde_json::from_str::<LineId>("42").is_err());
}

#[test]
fn an_aggregate_id_converts_into_the_subject_token() {
    let id = OrderId::new();
    let aggregate: AggregateId = id.into();
    assert_eq!(aggregate.as_str(), id.to_string());
}
