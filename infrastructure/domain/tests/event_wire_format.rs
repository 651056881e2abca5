//! The events on the wire: the seed's subjects, event types, JSON round trips and decoding from
//! stored metadata.

mod support;

use std::collections::BTreeSet;

use cim_domain_infrastructure::{InfrastructureEvent, NatsEvent};
use cim_nats::{AggregateId, NewEvent};

/// The subjects the seed's README lists, in its order.
const SEED_SUBJECTS: [&str; 9] = [
    "infrastructure.compute.registered",
    "infrastructure.compute.decommissioned",
    "infrastructure.compute.updated",
    "infrastructure.network.defined",
    "infrastructure.network.removed",
    "infrastructure.connection.established",
    "infrastructure.connection.severed",
    "infrastructure.software.configured",
    "infrastructure.policy.set",
];

/// What the domain adds to the seed's list.
const ADDED_SUBJECTS: [&str; 4] = [
    "infrastructure.software.removed",
    "infrastructure.policy.removed",
    "infrastructure.hostname.reserved",
    "infrastructure.hostname.released",
];

#[test]
fn subjects_are_the_seeds_plus_the_additions() {
    let derived: BTreeSet<_> = InfrastructureEvent::SUBJECTS.iter().copied().collect();
    let expected: BTreeSet<_> = SEED_SUBJECTS.into_iter().chain(ADDED_SUBJECTS).collect();
    assert_eq!(derived, expected);
    assert_eq!(
        InfrastructureEvent::SUBJECTS.len(),
        expected.len(),
        "no duplicates"
    );
    // The seed's subjects keep the seed's order.
    let seed_in_order: Vec<_> = InfrastructureEvent::SUBJECTS
        .iter()
        .copied()
        .filter(|s| SEED_SUBJECTS.contains(s))
        .collect();
    assert_eq!(seed_in_order, SEED_SUBJECTS);
}

#[test]
fn event_types_and_wildcards() {
    assert_eq!(InfrastructureEvent::DOMAIN, "infrastructure");
    assert_eq!(InfrastructureEvent::DOMAIN_WILDCARD, "infrastructure.>");
    assert_eq!(
        InfrastructureEvent::EVENT_TYPES,
        [
            "ComputeResourceRegistered",
            "ComputeResourceDecommissioned",
            "ComputeResourceUpdated",
            "NetworkDefined",
            "NetworkRemoved",
            "ConnectionEstablished",
            "ConnectionSevered",
            "SoftwareConfigured",
            "SoftwareRemoved",
            "PolicySet",
            "PolicyRemoved",
            "HostnameReserved",
            "HostnameReleased",
        ]
    );
    assert_eq!(
        InfrastructureEvent::ENTITY_WILDCARDS,
        [
            ("compute", "infrastructure.compute.>"),
            ("network", "infrastructure.network.>"),
            ("connection", "infrastructure.connection.>"),
            ("software", "infrastructure.software.>"),
            ("policy", "infrastructure.policy.>"),
            ("hostname", "infrastructure.hostname.>"),
        ]
    );
    assert!(InfrastructureEvent::EVENTS.iter().all(|d| d.version == 1));
}

#[test]
fn every_event_type_occurs_in_the_fixture() {
    let h = support::every_event();
    let seen: BTreeSet<_> = h
        .events
        .iter()
        .chain(&h.claims)
        .map(NatsEvent::event_type)
        .collect();
    let all: BTreeSet<_> = InfrastructureEvent::EVENT_TYPES.iter().copied().collect();
    assert_eq!(seen, all);
}

#[test]
fn every_event_is_stored_under_its_seed_subject_and_the_infrastructure_id() {
    let h = support::every_event();
    let aggregate_id: AggregateId = h.id.into();
    for event in &h.events {
        let subject = event.subject(&aggregate_id);
        let routing = event.routing_subject();
        assert!(
            SEED_SUBJECTS.contains(&routing) || ADDED_SUBJECTS.contains(&routing),
            "{routing}"
        );
        assert!(subject.as_str().starts_with(routing));
        assert_eq!(subject.as_str(), format!("{routing}.{}", h.id));
        assert_eq!(event.aggregate_id().unwrap(), Some(aggregate_id.clone()));
        assert_eq!(event.infrastructure_id(), h.id);
        assert!(event.event_id().is_some());
        assert!(event.message_identity().is_some());
        let kind = event.entity_kind();
        let wildcard = InfrastructureEvent::entity_wildcard(kind).unwrap();
        assert!(subject.as_str().starts_with(wildcard.trim_end_matches('>')));
    }
}

#[test]
fn every_event_round_trips_through_json_and_decode() {
    let h = support::every_event();
    for event in h.events.iter().chain(&h.claims) {
        let json = serde_json::to_string(event).unwrap();
        let back: InfrastructureEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, event);

        let payload = event.encode().unwrap();
        let decoded =
            InfrastructureEvent::decode(event.event_type(), event.schema_version(), &payload)
                .unwrap();
        assert_eq!(&decoded, event);

        // As the store would encode it.
        let new = NewEvent::from_event(event).unwrap();
        assert_eq!(new.routing_subject, event.routing_subject());
        assert_eq!(new.event_type, event.event_type());
        let decoded =
            InfrastructureEvent::decode(&new.event_type, new.schema_version, &new.payload).unwrap();
        assert_eq!(&decoded, event);
    }
}

#[test]
fn decoding_under_another_type_is_refused() {
    let h = support::every_event();
    let event = &h.events[0];
    let payload = event.encode().unwrap();
    assert!(InfrastructureEvent::decode("NetworkDefined", 1, &payload).is_err());
    assert!(InfrastructureEvent::decode(event.event_type(), 2, &payload).is_err());
    assert!(InfrastructureEvent::decode("ComputeRegistered", 1, &payload).is_err());
}

#[test]
fn the_json_names_the_variant_and_its_fields() {
    let h = support::every_event();
    let json = serde_json::to_value(&h.events[0]).unwrap();
    let body = &json["ComputeResourceRegistered"];
    assert_eq!(body["infrastructure_id"], h.id.to_string());
    assert_eq!(body["resource"]["hostname"], "web");
    assert_eq!(body["identity"]["actor"], "ops");
    assert!(body["event_id"].is_string());
}
