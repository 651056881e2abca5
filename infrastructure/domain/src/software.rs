//! Software configured on compute resources.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{require_text, SpecError};
use crate::ids::{ResourceId, SoftwareId};

/// A piece of software configured on a compute resource: its name, version and settings.
///
/// ```
/// use cim_domain_infrastructure::{ResourceId, SoftwareConfiguration};
///
/// let nats = SoftwareConfiguration::new(ResourceId::new(), "nats-server", "2.12.1")?
///     .with_setting("jetstream", "enabled");
/// assert_eq!(nats.settings["jetstream"], "enabled");
/// # Ok::<(), cim_domain_infrastructure::SpecError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftwareConfiguration {
    /// The configuration's id.
    pub id: SoftwareId,
    /// The compute resource the software runs on.
    pub resource: ResourceId,
    /// The software's name, e.g. `"nats-server"`.
    pub name: String,
    /// The software's version, as its vendor writes it.
    pub version: String,
    /// Configuration settings, sorted by key.
    pub settings: BTreeMap<String, String>,
}

impl SoftwareConfiguration {
    /// A configuration with a new id and no settings.
    ///
    /// # Errors
    ///
    /// [`SpecError::BlankField`] if `name` or `version` is empty or only whitespace.
    pub fn new(
        resource: ResourceId,
        name: impl Into<String>,
        version: impl Into<String>,
    ) -> Result<Self, SpecError> {
        let spec = Self {
            id: SoftwareId::new(),
            resource,
            name: name.into(),
            version: version.into(),
            settings: BTreeMap::new(),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// This configuration with one more setting (replacing any setting with the same key).
    #[must_use]
    pub fn with_setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.insert(key.into(), value.into());
        self
    }

    /// Checks the rules [`new`](Self::new) checks, for a value built field by field.
    ///
    /// # Errors
    ///
    /// [`SpecError::BlankField`] if the name or the version is empty or only whitespace.
    pub fn validate(&self) -> Result<(), SpecError> {
        require_text("software configuration", "name", &self.name)?;
        require_text("software configuration", "version", &self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_and_serde_round_trip() {
        let resource = ResourceId::new();
        let spec = SoftwareConfiguration::new(resource, "postgres", "16.2")
            .unwrap()
            .with_setting("max_connections", "200")
            .with_setting("port", "5432");
        assert_eq!(spec.resource, resource);
        assert_eq!(spec.settings.len(), 2);
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["settings"]["port"], "5432");
        assert_eq!(
            serde_json::from_value::<SoftwareConfiguration>(json).unwrap(),
            spec
        );
    }

    #[test]
    fn rejects_blank_name_and_version() {
        let resource = ResourceId::new();
        assert_eq!(
            SoftwareConfiguration::new(resource, " ", "1.0"),
            Err(SpecError::BlankField {
                spec: "software configuration",
                field: "name"
            })
        );
        assert_eq!(
            SoftwareConfiguration::new(resource, "nginx", ""),
            Err(SpecError::BlankField {
                spec: "software configuration",
                field: "version"
            })
        );
        let mut spec = SoftwareConfiguration::new(resource, "nginx", "1.27").unwrap();
        spec.name.clear();
        assert!(spec.validate().is_err());
    }
}
