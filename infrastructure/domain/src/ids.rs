//! Identifiers of the infrastructure domain.
//!
//! Every id is a UUID (version 7 when generated, so ids sort by creation time) wrapped in its own
//! type, so a [`ResourceId`] can never be passed where a [`NetworkId`] is expected. Ids are
//! `Copy`, serialise as a plain UUID string and parse from one.

use cim_nats::EntityId;
use uuid::Uuid;

/// A string that is not a valid id.
///
/// ```
/// use cim_domain_infrastructure::ResourceId;
///
/// let err = "not-a-uuid".parse::<ResourceId>().unwrap_err();
/// assert_eq!(err.kind(), "ResourceId");
/// assert_eq!(err.value(), "not-a-uuid");
/// ```
pub use cim_nats::IdParseError as IdError;

/// The id of an infrastructure aggregate: the consistency unit whose events share one version
/// sequence and one subject token.
///
/// It converts into the framework's [`AggregateId`](cim_nats::AggregateId):
///
/// ```
/// use cim_domain_infrastructure::InfrastructureId;
/// use cim_nats::AggregateId;
///
/// let id = InfrastructureId::new();
/// let aggregate_id: AggregateId = id.into();
/// assert_eq!(aggregate_id.as_str(), id.to_string());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EntityId)]
#[entity_id(aggregate)]
pub struct InfrastructureId(Uuid);

/// The id of a compute resource (a physical machine, a virtual machine or a container).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EntityId)]
pub struct ResourceId(Uuid);

/// The id of a network.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EntityId)]
pub struct NetworkId(Uuid);

/// The id of a connection between two compute resources.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EntityId)]
pub struct ConnectionId(Uuid);

/// The id of a software configuration applied to a compute resource.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EntityId)]
pub struct SoftwareId(Uuid);

/// The id of a policy rule.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EntityId)]
pub struct PolicyId(Uuid);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn new_ids_are_unique_and_version_7() {
        let a = ResourceId::new();
        let b = ResourceId::new();
        assert_ne!(a, b);
        assert_eq!(a.as_uuid().get_version_num(), 7);
        let set: HashSet<_> = (0..100).map(|_| NetworkId::default()).collect();
        assert_eq!(set.len(), 100);
    }

    #[test]
    fn new_ids_sort_by_creation() {
        let ids: Vec<_> = (0..50).map(|_| InfrastructureId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn display_and_from_str_round_trip() {
        let id = ConnectionId::new();
        let parsed: ConnectionId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        assert_eq!(format!("{id:?}"), format!("ConnectionId({id})"));
    }

    #[test]
    fn from_str_rejects_garbage_naming_the_type() {
        let err = "nope".parse::<PolicyId>().unwrap_err();
        assert_eq!(err.kind(), "PolicyId");
        assert_eq!(err.value(), "nope");
        assert!(err.to_string().starts_with("invalid PolicyId \"nope\""));
    }

    #[test]
    fn serde_is_a_plain_uuid_string() {
        let uuid = Uuid::now_v7();
        let id = SoftwareId::from_uuid(uuid);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{uuid}\""));
        let back: SoftwareId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<SoftwareId>("\"x\"").is_err());
    }

    #[test]
    fn uuid_conversions() {
        let uuid = Uuid::now_v7();
        let id = ResourceId::from(uuid);
        assert_eq!(Uuid::from(id), uuid);
        assert_eq!(*id.as_uuid(), uuid);
    }

    #[test]
    fn infrastructure_id_is_a_valid_aggregate_id() {
        let id = InfrastructureId::new();
        let aggregate: cim_nats::AggregateId = id.into();
        assert_eq!(aggregate.as_str(), id.to_string());
        // Copy: still usable after the conversion.
        let again: cim_nats::AggregateId = id.into();
        assert_eq!(aggregate, again);
    }
}
