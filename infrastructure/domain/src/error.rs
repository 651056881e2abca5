//! Errors of the specifications built from several values.
//!
//! Each value object has its own error next to it ([`HostnameError`](crate::HostnameError),
//! [`SystemArchitectureError`](crate::SystemArchitectureError), [`CidrError`](crate::CidrError),
//! [`IdError`](crate::IdError)); [`SpecError`] covers the checks that span a whole specification.

use crate::ids::ResourceId;

/// Why a specification (network, connection, software configuration, policy rule) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A required text field is empty or only whitespace.
    #[error("invalid {spec}: `{field}` must not be empty or blank")]
    BlankField {
        /// The specification, e.g. `"network"`.
        spec: &'static str,
        /// The field, e.g. `"name"`.
        field: &'static str,
    },
    /// A connection whose two ends are the same resource.
    #[error("invalid connection: resource {resource} cannot be connected to itself")]
    SelfConnection {
        /// The resource at both ends.
        resource: ResourceId,
    },
}

/// Fails with [`SpecError::BlankField`] if `value` is empty or only whitespace.
pub(crate) fn require_text(
    spec: &'static str,
    field: &'static str,
    value: &str,
) -> Result<(), SpecError> {
    if value.trim().is_empty() {
        Err(SpecError::BlankField { spec, field })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_text_rejects_blank() {
        assert!(require_text("network", "name", "lan").is_ok());
        for blank in ["", " ", "\t\n"] {
            let err = require_text("network", "name", blank).unwrap_err();
            assert_eq!(
                err,
                SpecError::BlankField {
                    spec: "network",
                    field: "name"
                }
            );
            assert_eq!(
                err.to_string(),
                "invalid network: `name` must not be empty or blank"
            );
        }
    }
}
