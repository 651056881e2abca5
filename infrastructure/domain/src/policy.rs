//! Policy rules and what they apply to.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{require_text, SpecError};
use crate::ids::{NetworkId, PolicyId, ResourceId};

/// What a policy rule applies to.
///
/// Serialised with a `kind` tag and, for a resource or network, its `id`:
/// `{"kind":"infrastructure"}`, `{"kind":"resource","id":"…"}`, `{"kind":"network","id":"…"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum PolicyScope {
    /// The whole infrastructure.
    Infrastructure,
    /// One compute resource.
    Resource(ResourceId),
    /// One network.
    Network(NetworkId),
}

impl fmt::Display for PolicyScope {
    /// `infrastructure`, `resource {id}` or `network {id}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyScope::Infrastructure => f.write_str("infrastructure"),
            PolicyScope::Resource(id) => write!(f, "resource {id}"),
            PolicyScope::Network(id) => write!(f, "network {id}"),
        }
    }
}

/// A named policy rule over a scope. The rule itself is an opaque expression, interpreted by
/// whoever enforces it.
///
/// ```
/// use cim_domain_infrastructure::{PolicyRule, PolicyScope};
///
/// let rule = PolicyRule::new("ssh-keys-only", PolicyScope::Infrastructure, "deny password_auth")?;
/// assert_eq!(rule.scope, PolicyScope::Infrastructure);
/// assert!(PolicyRule::new("", PolicyScope::Infrastructure, "allow all").is_err());
/// # Ok::<(), cim_domain_infrastructure::SpecError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    /// The rule's id.
    pub id: PolicyId,
    /// A human name, e.g. `"ssh-keys-only"`.
    pub name: String,
    /// What the rule applies to.
    pub scope: PolicyScope,
    /// The rule's expression.
    pub rule: String,
}

impl PolicyRule {
    /// A policy rule with a new id.
    ///
    /// # Errors
    ///
    /// [`SpecError::BlankField`] if `name` or `rule` is empty or only whitespace.
    pub fn new(
        name: impl Into<String>,
        scope: PolicyScope,
        rule: impl Into<String>,
    ) -> Result<Self, SpecError> {
        let spec = Self {
            id: PolicyId::new(),
            name: name.into(),
            scope,
            rule: rule.into(),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the rules [`new`](Self::new) checks, for a value built field by field.
    ///
    /// # Errors
    ///
    /// [`SpecError::BlankField`] if the name or the rule is empty or only whitespace.
    pub fn validate(&self) -> Result<(), SpecError> {
        require_text("policy rule", "name", &self.name)?;
        require_text("policy rule", "rule", &self.rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_serde_shape() {
        let resource = ResourceId::new();
        let network = NetworkId::new();
        let cases = [
            (
                PolicyScope::Infrastructure,
                serde_json::json!({"kind": "infrastructure"}),
            ),
            (
                PolicyScope::Resource(resource),
                serde_json::json!({"kind": "resource", "id": resource.to_string()}),
            ),
            (
                PolicyScope::Network(network),
                serde_json::json!({"kind": "network", "id": network.to_string()}),
            ),
        ];
        for (scope, json) in cases {
            assert_eq!(serde_json::to_value(scope).unwrap(), json);
            assert_eq!(serde_json::from_value::<PolicyScope>(json).unwrap(), scope);
        }
        assert!(
            serde_json::from_value::<PolicyScope>(serde_json::json!({"kind": "resource"})).is_err()
        );
        assert!(
            serde_json::from_value::<PolicyScope>(serde_json::json!({"kind": "planet"})).is_err()
        );
    }

    #[test]
    fn scope_display() {
        let id = ResourceId::new();
        assert_eq!(PolicyScope::Infrastructure.to_string(), "infrastructure");
        assert_eq!(
            PolicyScope::Resource(id).to_string(),
            format!("resource {id}")
        );
        let net = NetworkId::new();
        assert_eq!(
            PolicyScope::Network(net).to_string(),
            format!("network {net}")
        );
    }

    #[test]
    fn new_and_serde_round_trip() {
        let rule = PolicyRule::new(
            "no-public-db",
            PolicyScope::Network(NetworkId::new()),
            "deny ingress 0.0.0.0/0 port 5432",
        )
        .unwrap();
        let json = serde_json::to_value(&rule).unwrap();
        assert_eq!(json["scope"]["kind"], "network");
        assert_eq!(serde_json::from_value::<PolicyRule>(json).unwrap(), rule);
    }

    #[test]
    fn rejects_blank_name_and_rule() {
        assert_eq!(
            PolicyRule::new("\n", PolicyScope::Infrastructure, "allow"),
            Err(SpecError::BlankField {
                spec: "policy rule",
                field: "name"
            })
        );
        assert_eq!(
            PolicyRule::new("x", PolicyScope::Infrastructure, "  "),
            Err(SpecError::BlankField {
                spec: "policy rule",
                field: "rule"
            })
        );
    }
}
