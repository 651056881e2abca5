//! The subject hierarchy of the seed README ("NATS Subject Hierarchy"): its examples and
//! wildcards, exactly, and the functions that give them.

use std::collections::BTreeSet;

use cim_domain_infrastructure::{InfrastructureEvent, InfrastructureId};
use cim_infrastructure_nats::subjects::subjects;
use cim_nats::subject::subject_matches;
use cim_nats::{AggregateId, NatsEvent};

/// The seed's examples of `infrastructure.{aggregate}.{operation}`.
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

/// The seed's wildcard subscriptions.
const SEED_WILDCARDS: [&str; 3] = [
    "infrastructure.compute.>",
    "infrastructure.network.>",
    "infrastructure.>",
];

#[test]
fn the_seed_subjects_are_the_events_subjects() {
    for subject in SEED_SUBJECTS {
        assert!(
            InfrastructureEvent::SUBJECTS.contains(&subject),
            "{subject} is not the subject of an infrastructure event"
        );
    }
    let from_functions = [
        subjects::compute_registered(),
        subjects::compute_decommissioned(),
        subjects::compute_updated(),
        subjects::network_defined(),
        subjects::network_removed(),
        subjects::connection_established(),
        subjects::connection_severed(),
        subjects::software_configured(),
        subjects::policy_set(),
    ];
    assert_eq!(from_functions, SEED_SUBJECTS);
}

#[test]
fn the_seed_wildcards() {
    assert_eq!(
        [
            subjects::all_compute_events(),
            subjects::all_network_events(),
            subjects::all_events(),
        ],
        SEED_WILDCARDS
    );
    assert_eq!(
        subjects::all_connection_events(),
        "infrastructure.connection.>"
    );
    assert_eq!(subjects::all_software_events(), "infrastructure.software.>");
    assert_eq!(subjects::all_policy_events(), "infrastructure.policy.>");
}

#[test]
fn every_event_subject_has_a_function() {
    let functions: BTreeSet<&str> = [
        subjects::compute_registered(),
        subjects::compute_decommissioned(),
        subjects::compute_updated(),
        subjects::network_defined(),
        subjects::network_removed(),
        subjects::connection_established(),
        subjects::connection_severed(),
        subjects::software_configured(),
        subjects::software_removed(),
        subjects::policy_set(),
        subjects::policy_removed(),
        subjects::hostname_reserved(),
        subjects::hostname_released(),
    ]
    .into_iter()
    .collect();
    let events: BTreeSet<&str> = InfrastructureEvent::SUBJECTS.iter().copied().collect();
    assert_eq!(functions, events);
    assert_eq!(
        subjects::software_removed(),
        "infrastructure.software.removed"
    );
    assert_eq!(subjects::policy_removed(), "infrastructure.policy.removed");

    // Each entity wildcard selects exactly the subjects of its entity kind.
    let wildcards = [
        ("compute", subjects::all_compute_events()),
        ("network", subjects::all_network_events()),
        ("connection", subjects::all_connection_events()),
        ("software", subjects::all_software_events()),
        ("policy", subjects::all_policy_events()),
    ];
    for routing in InfrastructureEvent::SUBJECTS {
        let stored = format!("{routing}.{}", InfrastructureId::new());
        assert!(subject_matches(subjects::all_events(), &stored));
        let kind = routing.split('.').nth(1).unwrap();
        for (k, wildcard) in wildcards {
            assert_eq!(
                subject_matches(wildcard, &stored),
                k == kind,
                "{wildcard} / {stored}"
            );
        }
    }
}

#[test]
fn one_infrastructure() {
    let id = InfrastructureId::new();
    let filter = subjects::for_aggregate(id);
    assert_eq!(filter, format!("infrastructure.*.*.{id}"));
    let same = subjects::for_aggregate(AggregateId::from(id));
    assert_eq!(filter, same);

    let mine = format!("{}.{id}", subjects::compute_registered());
    let other = format!(
        "{}.{}",
        subjects::compute_registered(),
        InfrastructureId::new()
    );
    assert!(subject_matches(&filter, &mine));
    assert!(!subject_matches(&filter, &other));

    assert_eq!(
        subjects::of_event(subjects::connection_severed(), id),
        Some(format!("infrastructure.connection.severed.{id}"))
    );
    assert_eq!(
        subjects::of_event("infrastructure.compute.booted", id),
        None
    );

    // Ids are subject tokens checked when they are built: no filter can be widened by one.
    for bad in ["a.b", "*", ">", "", "with space"] {
        assert!(AggregateId::new(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn the_seed_passes_a_subject_to_a_builder() {
    // `EventSubscriberBuilder::subject(..)` takes `impl Into<String>`.
    fn subject(s: impl Into<String>) -> String {
        s.into()
    }
    assert_eq!(
        subject(subjects::all_compute_events()),
        "infrastructure.compute.>"
    );
}
