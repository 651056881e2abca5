//! The NATS subjects of infrastructure events, for subscriptions and stream filters.
//!
//! Every event is stored on `infrastructure.{entity}.{operation}.{infrastructure_id}`. The
//! functions of [`subjects`] give the routing subjects `infrastructure.{entity}.{operation}` of
//! each event type, the wildcards of the seed (`infrastructure.compute.>`, `infrastructure.>`,
//! ...), and the filter of one infrastructure's events. They read the metadata that
//! `#[derive(NatsEvent)]` generates for
//! [`InfrastructureEvent`](cim_domain_infrastructure::InfrastructureEvent), so they cannot drift
//! from the subjects events are stored on, and they allocate nothing (except
//! [`subjects::for_aggregate`], [`subjects::of_event_type`] and [`subjects::of_event`], which
//! build a filter at run time).
//!
//! | function | subject |
//! |---|---|
//! | [`subjects::all_events`] | `infrastructure.>` |
//! | [`subjects::all_compute_events`] | `infrastructure.compute.>` |
//! | [`subjects::all_network_events`] | `infrastructure.network.>` |
//! | [`subjects::all_connection_events`] | `infrastructure.connection.>` |
//! | [`subjects::all_software_events`] | `infrastructure.software.>` |
//! | [`subjects::all_policy_events`] | `infrastructure.policy.>` |
//! | [`subjects::compute_registered`] | `infrastructure.compute.registered` |
//! | [`subjects::compute_decommissioned`] | `infrastructure.compute.decommissioned` |
//! | [`subjects::compute_updated`] | `infrastructure.compute.updated` |
//! | [`subjects::network_defined`] | `infrastructure.network.defined` |
//! | [`subjects::network_removed`] | `infrastructure.network.removed` |
//! | [`subjects::connection_established`] | `infrastructure.connection.established` |
//! | [`subjects::connection_severed`] | `infrastructure.connection.severed` |
//! | [`subjects::software_configured`] | `infrastructure.software.configured` |
//! | [`subjects::software_removed`] | `infrastructure.software.removed` |
//! | [`subjects::policy_set`] | `infrastructure.policy.set` |
//! | [`subjects::policy_removed`] | `infrastructure.policy.removed` |
//! | [`subjects::for_aggregate`] | `infrastructure.*.*.{infrastructure_id}` |
//! | [`subjects::of_event_type`] | `{routing}.*` |
//! | [`subjects::of_event`] | `{routing}.{infrastructure_id}` |
//!
//! A routing subject names an event type, but it is not the subject a message is stored on:
//! that one ends with the infrastructure's id. To subscribe to one event type use
//! [`subjects::of_event_type`] (`infrastructure.compute.registered.*`, every infrastructure) or
//! [`subjects::of_event`] (one infrastructure); the wildcards above already match stored
//! subjects.
//!
//! ```
//! use cim_infrastructure_nats::subjects::subjects;
//!
//! assert_eq!(subjects::all_compute_events(), "infrastructure.compute.>");
//! assert_eq!(subjects::compute_registered(), "infrastructure.compute.registered");
//! ```

/// The subject functions; see the [module documentation](self) for the list.
// The seed's path is `cim_infrastructure_nats::subjects::subjects`.
#[allow(clippy::module_inception)]
pub mod subjects {
    use cim_domain_infrastructure::InfrastructureEvent;
    use cim_nats::{AggregateId, NatsEvent};

    /// The wildcard of one entity kind, `infrastructure.{entity}.>`, from the derive's metadata.
    fn entity(kind: &str) -> &'static str {
        InfrastructureEvent::entity_wildcard(kind).unwrap_or_else(|| {
            panic!("InfrastructureEvent has no events of the entity kind {kind:?}")
        })
    }

    /// The routing subject `infrastructure.{entity}.{operation}` of one event type, from the
    /// derive's metadata.
    fn routing(kind: &str, operation: &str) -> &'static str {
        InfrastructureEvent::EVENTS
            .iter()
            .find(|d| d.entity_kind == kind && d.operation == operation)
            .map(|d| d.subject)
            .unwrap_or_else(|| {
                panic!("InfrastructureEvent has no event on infrastructure.{kind}.{operation}")
            })
    }

    /// Every infrastructure event: `infrastructure.>`.
    pub fn all_events() -> &'static str {
        InfrastructureEvent::DOMAIN_WILDCARD
    }

    /// Every compute resource event: `infrastructure.compute.>`.
    pub fn all_compute_events() -> &'static str {
        entity("compute")
    }

    /// Every network event: `infrastructure.network.>`.
    pub fn all_network_events() -> &'static str {
        entity("network")
    }

    /// Every connection event: `infrastructure.connection.>`.
    pub fn all_connection_events() -> &'static str {
        entity("connection")
    }

    /// Every software configuration event: `infrastructure.software.>`.
    pub fn all_software_events() -> &'static str {
        entity("software")
    }

    /// Every policy event: `infrastructure.policy.>`.
    pub fn all_policy_events() -> &'static str {
        entity("policy")
    }

    /// A compute resource was registered: `infrastructure.compute.registered`.
    pub fn compute_registered() -> &'static str {
        routing("compute", "registered")
    }

    /// A compute resource was decommissioned: `infrastructure.compute.decommissioned`.
    pub fn compute_decommissioned() -> &'static str {
        routing("compute", "decommissioned")
    }

    /// A compute resource's capabilities changed: `infrastructure.compute.updated`.
    pub fn compute_updated() -> &'static str {
        routing("compute", "updated")
    }

    /// A network was defined: `infrastructure.network.defined`.
    pub fn network_defined() -> &'static str {
        routing("network", "defined")
    }

    /// A network was removed: `infrastructure.network.removed`.
    pub fn network_removed() -> &'static str {
        routing("network", "removed")
    }

    /// A connection was established: `infrastructure.connection.established`.
    pub fn connection_established() -> &'static str {
        routing("connection", "established")
    }

    /// A connection was severed: `infrastructure.connection.severed`.
    pub fn connection_severed() -> &'static str {
        routing("connection", "severed")
    }

    /// Software was configured: `infrastructure.software.configured`.
    pub fn software_configured() -> &'static str {
        routing("software", "configured")
    }

    /// A software configuration was removed: `infrastructure.software.removed`.
    pub fn software_removed() -> &'static str {
        routing("software", "removed")
    }

    /// A policy rule was set: `infrastructure.policy.set`.
    pub fn policy_set() -> &'static str {
        routing("policy", "set")
    }

    /// A policy rule was removed: `infrastructure.policy.removed`.
    pub fn policy_removed() -> &'static str {
        routing("policy", "removed")
    }

    /// Every hostname reservation event: `infrastructure.hostname.>`.
    pub fn all_hostname_events() -> &'static str {
        entity("hostname")
    }

    /// A hostname was taken (unique across infrastructures): `infrastructure.hostname.reserved`,
    /// stored under the hostname's reservation id.
    pub fn hostname_reserved() -> &'static str {
        routing("hostname", "reserved")
    }

    /// A hostname was given up: `infrastructure.hostname.released`.
    pub fn hostname_released() -> &'static str {
        routing("hostname", "released")
    }

    /// Every event of one infrastructure: `infrastructure.*.*.{infrastructure_id}`.
    ///
    /// The id is a validated subject token: an [`InfrastructureId`] always is, and an
    /// [`AggregateId`] is checked when it is built (`AggregateId::new("a.b")` fails), so the
    /// filter can never match more than the one infrastructure.
    ///
    /// ```
    /// use cim_domain_infrastructure::InfrastructureId;
    /// use cim_infrastructure_nats::subjects::subjects;
    ///
    /// let id = InfrastructureId::new();
    /// assert_eq!(subjects::for_aggregate(id), format!("infrastructure.*.*.{id}"));
    /// ```
    ///
    /// [`InfrastructureId`]: cim_domain_infrastructure::InfrastructureId
    pub fn for_aggregate(id: impl Into<AggregateId>) -> String {
        let id = id.into();
        format!("{}.*.*.{}", InfrastructureEvent::DOMAIN, id.as_str())
    }

    /// One event type of every infrastructure: `{routing}.*`, e.g.
    /// `of_event_type(compute_registered())` is `infrastructure.compute.registered.*`, the filter
    /// that matches the stored subjects of that event type.
    ///
    /// Returns `None` if `routing` is not the routing subject of an infrastructure event.
    ///
    /// ```
    /// use cim_infrastructure_nats::subjects::subjects;
    ///
    /// assert_eq!(
    ///     subjects::of_event_type(subjects::compute_registered()).as_deref(),
    ///     Some("infrastructure.compute.registered.*")
    /// );
    /// ```
    pub fn of_event_type(routing: &str) -> Option<String> {
        InfrastructureEvent::SUBJECTS
            .contains(&routing)
            .then(|| format!("{routing}.*"))
    }

    /// One event type of one infrastructure: `{routing}.{infrastructure_id}`, e.g.
    /// `of_event(compute_registered(), id)` is `infrastructure.compute.registered.{id}`.
    ///
    /// Returns `None` if `routing` is not the routing subject of an infrastructure event.
    ///
    /// ```
    /// use cim_domain_infrastructure::InfrastructureId;
    /// use cim_infrastructure_nats::subjects::subjects;
    ///
    /// let id = InfrastructureId::new();
    /// assert_eq!(
    ///     subjects::of_event(subjects::policy_set(), id).as_deref(),
    ///     Some(format!("infrastructure.policy.set.{id}").as_str())
    /// );
    /// assert_eq!(subjects::of_event("infrastructure.compute.>", id), None);
    /// ```
    pub fn of_event(routing: &str, id: impl Into<AggregateId>) -> Option<String> {
        InfrastructureEvent::SUBJECTS
            .contains(&routing)
            .then(|| format!("{routing}.{}", id.into().as_str()))
    }
}
