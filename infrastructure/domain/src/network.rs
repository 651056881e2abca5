//! Networks: a name and an address range.

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::error::{require_text, SpecError};
use crate::ids::NetworkId;

/// The specification of a network: an id, a human name and an address range.
///
/// ```
/// use cim_domain_infrastructure::{Cidr, NetworkSpec};
///
/// let spec = NetworkSpec::new("management", Cidr::new("10.10.0.0/16")?)?;
/// assert_eq!(spec.name, "management");
/// assert!(NetworkSpec::new("  ", spec.cidr).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The network's id.
    pub id: NetworkId,
    /// A human name, unique by convention (e.g. `"management"`).
    pub name: String,
    /// The address range.
    pub cidr: Cidr,
}

impl NetworkSpec {
    /// A network with a new id.
    ///
    /// # Errors
    ///
    /// [`SpecError::BlankField`] if `name` is empty or only whitespace.
    pub fn new(name: impl Into<String>, cidr: Cidr) -> Result<Self, SpecError> {
        let spec = Self {
            id: NetworkId::new(),
            name: name.into(),
            cidr,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the rules [`new`](Self::new) checks, for a value built field by field.
    ///
    /// # Errors
    ///
    /// [`SpecError::BlankField`] if the name is empty or only whitespace.
    pub fn validate(&self) -> Result<(), SpecError> {
        require_text("network", "name", &self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn network_spec() {
        let spec = NetworkSpec::new("lan", cidr("192.168.1.0/24")).unwrap();
        assert_eq!(spec.name, "lan");
        assert!(spec.validate().is_ok());
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["cidr"], "192.168.1.0/24");
        assert_eq!(serde_json::from_value::<NetworkSpec>(json).unwrap(), spec);

        assert_eq!(
            NetworkSpec::new("", spec.cidr),
            Err(SpecError::BlankField {
                spec: "network",
                field: "name"
            })
        );
        let blank = NetworkSpec {
            name: " \t".into(),
            ..spec
        };
        assert!(blank.validate().is_err());
    }
}
