//! Connections between compute resources.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::ids::{ConnectionId, NetworkId, ResourceId};

/// The physical or logical kind of a connection.
///
/// Serialised in snake case: `"ethernet"`, `"wireless"`, `"virtual"`, `"vpn"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionKind {
    /// A wired Ethernet link.
    Ethernet,
    /// A wireless link.
    Wireless,
    /// A virtual link (bridge, virtual switch, overlay).
    Virtual,
    /// A VPN tunnel.
    Vpn,
}

impl ConnectionKind {
    /// The kind's name as serialised, e.g. `"vpn"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConnectionKind::Ethernet => "ethernet",
            ConnectionKind::Wireless => "wireless",
            ConnectionKind::Virtual => "virtual",
            ConnectionKind::Vpn => "vpn",
        }
    }
}

impl fmt::Display for ConnectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The specification of a connection from one compute resource to another over a network.
///
/// ```
/// use cim_domain_infrastructure::{ConnectionKind, ConnectionSpec, NetworkId, ResourceId};
///
/// let (web, db) = (ResourceId::new(), ResourceId::new());
/// let link = ConnectionSpec::new(web, db, NetworkId::new(), ConnectionKind::Ethernet)?;
/// assert!(link.connects(db));
/// assert!(ConnectionSpec::new(web, web, link.network, ConnectionKind::Virtual).is_err());
/// # Ok::<(), cim_domain_infrastructure::SpecError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSpec {
    /// The connection's id.
    pub id: ConnectionId,
    /// The resource the connection starts from.
    pub from: ResourceId,
    /// The resource the connection leads to.
    pub to: ResourceId,
    /// The network the connection belongs to.
    pub network: NetworkId,
    /// What kind of link it is.
    pub kind: ConnectionKind,
}

impl ConnectionSpec {
    /// A connection with a new id.
    ///
    /// # Errors
    ///
    /// [`SpecError::SelfConnection`] if `from` and `to` are the same resource.
    pub fn new(
        from: ResourceId,
        to: ResourceId,
        network: NetworkId,
        kind: ConnectionKind,
    ) -> Result<Self, SpecError> {
        let spec = Self {
            id: ConnectionId::new(),
            from,
            to,
            network,
            kind,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the rules [`new`](Self::new) checks, for a value built field by field.
    ///
    /// # Errors
    ///
    /// [`SpecError::SelfConnection`] if both ends are the same resource.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.from == self.to {
            return Err(SpecError::SelfConnection {
                resource: self.from,
            });
        }
        Ok(())
    }

    /// Whether `resource` is one of the two ends.
    pub fn connects(&self, resource: ResourceId) -> bool {
        self.from == resource || self.to == resource
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_serde_and_display() {
        for (kind, name) in [
            (ConnectionKind::Ethernet, "ethernet"),
            (ConnectionKind::Wireless, "wireless"),
            (ConnectionKind::Virtual, "virtual"),
            (ConnectionKind::Vpn, "vpn"),
        ] {
            assert_eq!(kind.to_string(), name);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<ConnectionKind>(&json).unwrap(), kind);
        }
        assert!(serde_json::from_str::<ConnectionKind>("\"carrier_pigeon\"").is_err());
    }

    #[test]
    fn new_and_serde_round_trip() {
        let (a, b) = (ResourceId::new(), ResourceId::new());
        let spec = ConnectionSpec::new(a, b, NetworkId::new(), ConnectionKind::Vpn).unwrap();
        assert!(spec.connects(a) && spec.connects(b));
        assert!(!spec.connects(ResourceId::new()));
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["kind"], "vpn");
        assert_eq!(json["from"], a.to_string());
        assert_eq!(
            serde_json::from_value::<ConnectionSpec>(json).unwrap(),
            spec
        );
    }

    #[test]
    fn rejects_self_connection() {
        let a = ResourceId::new();
        let err =
            ConnectionSpec::new(a, a, NetworkId::new(), ConnectionKind::Ethernet).unwrap_err();
        assert_eq!(err, SpecError::SelfConnection { resource: a });
        assert!(err.to_string().contains(&a.to_string()));
    }
}
