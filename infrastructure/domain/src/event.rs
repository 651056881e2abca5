//! The events of the infrastructure aggregate, one variant per fact, each on its own subject
//! `infrastructure.{entity}.{operation}`.

use chrono::{DateTime, Utc};
use cim_nats::{EventId, MessageIdentity, NatsEvent};
use serde::{Deserialize, Serialize};

use crate::compute::{ComputeResourceSpec, ResourceCapabilities};
use crate::connection::ConnectionSpec;
use crate::hostname::Hostname;
use crate::ids::{ConnectionId, InfrastructureId, NetworkId, PolicyId, ResourceId, SoftwareId};
use crate::network::NetworkSpec;
use crate::policy::PolicyRule;
use crate::software::SoftwareConfiguration;

/// What happened to an infrastructure: the events of
/// [`InfrastructureAggregate`](crate::InfrastructureAggregate).
///
/// Every event of one infrastructure shares its version sequence and its id token: the stored
/// subject is `infrastructure.{entity}.{operation}.{infrastructure_id}`, where the entity kind is
/// `compute`, `network`, `connection`, `software` or `policy` (so `infrastructure.compute.>`
/// selects every compute event of every infrastructure).
///
/// | event | subject |
/// |---|---|
/// | [`ComputeResourceRegistered`](Self::ComputeResourceRegistered) | `infrastructure.compute.registered` |
/// | [`ComputeResourceDecommissioned`](Self::ComputeResourceDecommissioned) | `infrastructure.compute.decommissioned` |
/// | [`ComputeResourceUpdated`](Self::ComputeResourceUpdated) | `infrastructure.compute.updated` |
/// | [`NetworkDefined`](Self::NetworkDefined) | `infrastructure.network.defined` |
/// | [`NetworkRemoved`](Self::NetworkRemoved) | `infrastructure.network.removed` |
/// | [`ConnectionEstablished`](Self::ConnectionEstablished) | `infrastructure.connection.established` |
/// | [`ConnectionSevered`](Self::ConnectionSevered) | `infrastructure.connection.severed` |
/// | [`SoftwareConfigured`](Self::SoftwareConfigured) | `infrastructure.software.configured` |
/// | [`SoftwareRemoved`](Self::SoftwareRemoved) | `infrastructure.software.removed` |
/// | [`PolicySet`](Self::PolicySet) | `infrastructure.policy.set` |
/// | [`PolicyRemoved`](Self::PolicyRemoved) | `infrastructure.policy.removed` |
///
/// Every variant carries the same three fields, named once on the enum (`event_id = ..`,
/// `aggregate_id = ..`, `identity = ..`):
///
/// - `event_id`: the event's own id, sent as `Nats-Msg-Id`. The aggregate leaves it
///   [unassigned](EventId::unassigned); the store derives it when it appends the event
///   ([`EventId::derive`]: from the command's message id, the infrastructure, the version and
///   the content), so a retried command yields the same ids and the store recognises the same
///   events, while another decision at the same version is a conflict.
/// - `infrastructure_id`: the aggregate instance, the last subject token.
/// - `identity`: the event's own [`MessageIdentity`]: its message id is the event id, its
///   correlation is the command's and its causation is the command's message id; the actor is
///   the command's. The store writes them in the headers.
///
/// ```
/// use cim_domain_infrastructure::InfrastructureEvent;
/// use cim_nats::NatsEvent;
///
/// assert_eq!(InfrastructureEvent::DOMAIN_WILDCARD, "infrastructure.>");
/// assert_eq!(
///     InfrastructureEvent::entity_wildcard("compute"),
///     Some("infrastructure.compute.>")
/// );
/// assert!(InfrastructureEvent::SUBJECTS.contains(&"infrastructure.connection.severed"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, NatsEvent)]
#[nats_event(
    domain = "infrastructure",
    event_id = "event_id",
    aggregate_id = "infrastructure_id",
    identity = "identity"
)]
pub enum InfrastructureEvent {
    /// A compute resource was registered.
    #[nats_event(aggregate = "compute", operation = "registered")]
    ComputeResourceRegistered {
        /// The event's id.
        event_id: EventId,
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The event's identity (correlation, causation, actor).
        identity: MessageIdentity,
        /// The resource as registered.
        resource: ComputeResourceSpec,
    },
    /// A compute resource was taken out of service. Its connections were severed, its software
    /// removed and its policies removed by the events just before this one.
    #[nats_event(aggregate = "compute", operation = "decommissioned")]
    ComputeResourceDecommissioned {
        /// The event's id.
        event_id: EventId,
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The event's identity (correlation, causation, actor).
        identity: MessageIdentity,
        /// The resource.
        resource_id: ResourceId,
    },
    /// A compute resource's capabilities changed.
    #[nats_event(aggregate = "compute", operation = "updated")]
    ComputeResourceUpdated {
        /// The event's id.
        event_id: EventId,
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The event's identity (correlation, causation, actor).
        identity: MessageIdentity,
        /// The resource.
        resource_id: ResourceId,
        /// Its new capabilities.
        capabilities: ResourceCapabilities,
    },
    /// A network was defined.
    #[nats_event(aggregate = "network", operation = "defined")]
    NetworkDefined {
        /// The event's id.
        event_id: EventId,
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The event's identity (correlation, causation, actor).
        identity: MessageIdentity,
        /// The network as defined.
        network: NetworkSpec,
    },
    /// A network was removed. Policies scoped to it were removed by the events just before.
    #[nats_event(aggregate = "network", operation = "removed")]
    NetworkRemoved {
        /// The event's id.
        event_id: EventId,
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The event's identity (correlation, causation, actor).
        identity: MessageIdentity,
        /// The network.
        network_id: NetworkId,
    },
    /// Two compute resources were connected over a network.
    #[nats_event(aggregate = "connection", operation = "established")]
    ConnectionEstablished {
        /// The event's id.
        event_id: EventId,
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The event's identity (correlation, causation, actor).
        identity: MessageIdentity,
        /// The connection as established.
        connection: ConnectionSpec,
    },
    /// A connection was severed (on request, or because one of its ends was decommissioned).
    #[nats_event(aggregate = "connection", operation = "severed")]
    ConnectionSevered {
        /// The event's id.
        event_id: EventId,
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The event's identity (correlation, causation, actor).
        identity: MessageIdentity,
        /// The connection.
        connection_id: ConnectionId,
    },
    /// Software was configured on a compute resource (new, or a changed configuration).
    #[nats_event(aggregate = "software", operation = "configured")]
    SoftwareConfigured {
        /// The event's id.
        event_id: EventId,
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The event's identity (correlation, causation, actor).
        identity: MessageIdentity,
        /// The configuration as it now is.
        software: SoftwareConfiguration,
    },
    /// A software configuration was removed.
    #[nats_event(aggregate = "software", operation = "removed")]
    SoftwareRemoved {
        /// The event's id.
        event_id: EventId,
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The event's identity (correlation, causation, actor).
        identity: MessageIdentity,
        /// The configuration.
        software_id: SoftwareId,
    },
    /// A policy rule was set (new, or a changed rule).
    #[nats_event(aggregate = "policy", operation = "set")]
    PolicySet {
        /// The event's id.
        event_id: EventId,
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The event's identity (correlation, causation, actor).
        identity: MessageIdentity,
        /// The rule as it now is.
        policy: PolicyRule,
    },
    /// A policy rule was removed (on request, or because its scope was retired).
    #[nats_event(aggregate = "policy", operation = "removed")]
    PolicyRemoved {
        /// The event's id.
        event_id: EventId,
        /// The infrastructure.
        infrastructure_id: InfrastructureId,
        /// The event's identity (correlation, causation, actor).
        identity: MessageIdentity,
        /// The rule.
        policy_id: PolicyId,
    },
    /// A hostname was taken by a compute resource of an infrastructure: hostnames are unique
    /// across every infrastructure. Stored under the hostname's reservation
    /// ([`InfrastructureEvent::hostname_reservation`]), not under the infrastructure; decided
    /// with the `ComputeResourceRegistered` it goes with.
    #[nats_event(aggregate = "hostname", operation = "reserved")]
    HostnameReserved {
        /// The event's id.
        event_id: EventId,
        /// The infrastructure that holds the hostname.
        infrastructure_id: InfrastructureId,
        /// The event's identity (correlation, causation, actor).
        identity: MessageIdentity,
        /// The hostname.
        hostname: Hostname,
        /// The resource it names.
        resource_id: ResourceId,
    },
    /// A hostname was given up (its resource decommissioned): it can be registered again.
    #[nats_event(aggregate = "hostname", operation = "released")]
    HostnameReleased {
        /// The event's id.
        event_id: EventId,
        /// The infrastructure that held the hostname.
        infrastructure_id: InfrastructureId,
        /// The event's identity (correlation, causation, actor).
        identity: MessageIdentity,
        /// The hostname.
        hostname: Hostname,
        /// The resource it named.
        resource_id: ResourceId,
    },
}

impl InfrastructureEvent {
    /// The reservation that keeps `hostname` unique across every infrastructure (kind
    /// `hostname`, the lowercase name): its events are stored under
    /// [`cim_nats::Reservation::id`], on `infrastructure.hostname.{reserved,released}.{id}`.
    pub fn hostname_reservation(hostname: &Hostname) -> cim_nats::Reservation {
        cim_nats::Reservation::new("hostname", hostname.as_str())
    }

    /// What this event does to a hostname's reservation, if it is one of the hostname events.
    pub fn claim(&self) -> Option<cim_nats::Claim> {
        match self {
            Self::HostnameReserved {
                infrastructure_id,
                hostname,
                ..
            } => Some(cim_nats::Claim::Take {
                reservation: Self::hostname_reservation(hostname),
                holder: (*infrastructure_id).into(),
            }),
            Self::HostnameReleased {
                infrastructure_id,
                hostname,
                ..
            } => Some(cim_nats::Claim::Release {
                reservation: Self::hostname_reservation(hostname),
                holder: (*infrastructure_id).into(),
            }),
            _ => None,
        }
    }

    fn common(&self) -> (&EventId, &InfrastructureId, &MessageIdentity) {
        match self {
            Self::ComputeResourceRegistered {
                event_id,
                infrastructure_id,
                identity,
                ..
            }
            | Self::ComputeResourceDecommissioned {
                event_id,
                infrastructure_id,
                identity,
                ..
            }
            | Self::ComputeResourceUpdated {
                event_id,
                infrastructure_id,
                identity,
                ..
            }
            | Self::NetworkDefined {
                event_id,
                infrastructure_id,
                identity,
                ..
            }
            | Self::NetworkRemoved {
                event_id,
                infrastructure_id,
                identity,
                ..
            }
            | Self::ConnectionEstablished {
                event_id,
                infrastructure_id,
                identity,
                ..
            }
            | Self::ConnectionSevered {
                event_id,
                infrastructure_id,
                identity,
                ..
            }
            | Self::SoftwareConfigured {
                event_id,
                infrastructure_id,
                identity,
                ..
            }
            | Self::SoftwareRemoved {
                event_id,
                infrastructure_id,
                identity,
                ..
            }
            | Self::PolicySet {
                event_id,
                infrastructure_id,
                identity,
                ..
            }
            | Self::PolicyRemoved {
                event_id,
                infrastructure_id,
                identity,
                ..
            }
            | Self::HostnameReserved {
                event_id,
                infrastructure_id,
                identity,
                ..
            }
            | Self::HostnameReleased {
                event_id,
                infrastructure_id,
                identity,
                ..
            } => (event_id, infrastructure_id, identity),
        }
    }

    /// The event's own id (the same as [`NatsEvent::event_id`], without the `Option`).
    pub fn id(&self) -> EventId {
        *self.common().0
    }

    /// The infrastructure the event belongs to.
    pub fn infrastructure_id(&self) -> InfrastructureId {
        *self.common().1
    }

    /// The event's identity: its correlation, its causation (the command) and its actor.
    pub fn identity(&self) -> &MessageIdentity {
        self.common().2
    }

    /// When the event happened, to the millisecond: the time of the command that caused it, as
    /// carried by the version 7 event id. `None` for an event id of another UUID version.
    pub fn occurred_at(&self) -> Option<DateTime<Utc>> {
        let id = self.id();
        let uuid = id.as_uuid();
        if uuid.get_version_num() != 7 {
            return None;
        }
        let (seconds, nanos) = uuid.get_timestamp()?.to_unix();
        DateTime::from_timestamp(i64::try_from(seconds).ok()?, nanos)
    }
}
