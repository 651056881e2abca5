//! Compute resources: what kind of machine, its name, its system and its capacity.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hostname::Hostname;
use crate::ids::ResourceId;
use crate::system::SystemArchitecture;

/// The kind of a compute resource.
///
/// Serialised in snake case: `"physical"`, `"virtual_machine"`, `"container"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeType {
    /// A physical machine.
    Physical,
    /// A virtual machine running on a hypervisor.
    VirtualMachine,
    /// A container.
    Container,
}

impl ComputeType {
    /// The type's name as serialised, e.g. `"virtual_machine"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ComputeType::Physical => "physical",
            ComputeType::VirtualMachine => "virtual_machine",
            ComputeType::Container => "container",
        }
    }
}

impl fmt::Display for ComputeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a compute resource offers. The default is all zero and no metadata (unknown capacity).
///
/// ```
/// use cim_domain_infrastructure::ResourceCapabilities;
///
/// let capabilities = ResourceCapabilities {
///     cpu_cores: 16,
///     memory_mb: 65_536,
///     ..ResourceCapabilities::default()
/// }
/// .with_metadata("rack", "r12");
/// assert_eq!(capabilities.metadata["rack"], "r12");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceCapabilities {
    /// Number of CPU cores.
    pub cpu_cores: u32,
    /// Memory, in mebibytes.
    pub memory_mb: u64,
    /// Storage, in gibibytes.
    pub storage_gb: u64,
    /// Number of GPUs.
    pub gpu_count: u32,
    /// Free-form key/value facts (rack, vendor, serial number, ...), sorted by key.
    pub metadata: BTreeMap<String, String>,
}

impl ResourceCapabilities {
    /// These capabilities with one more metadata entry (replacing any entry with the same key).
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// The specification of a compute resource to register.
///
/// Every field is already a validated value, so any value of this type is valid.
///
/// ```
/// use cim_domain_infrastructure::{
///     ComputeResourceSpec, ComputeType, Hostname, ResourceCapabilities, ResourceId,
///     SystemArchitecture,
/// };
///
/// let spec = ComputeResourceSpec {
///     id: ResourceId::new(),
///     resource_type: ComputeType::Physical,
///     hostname: Hostname::new("server01")?,
///     system: SystemArchitecture::new("x86_64-linux")?,
///     capabilities: ResourceCapabilities::default(),
/// };
/// assert_eq!(spec.hostname.as_str(), "server01");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeResourceSpec {
    /// The resource's id.
    pub id: ResourceId,
    /// What kind of machine it is.
    pub resource_type: ComputeType,
    /// Its host name.
    pub hostname: Hostname,
    /// Its CPU architecture and operating system.
    pub system: SystemArchitecture,
    /// What it offers.
    pub capabilities: ResourceCapabilities,
}

impl ComputeResourceSpec {
    /// A specification with a new id and default (unknown) capabilities.
    pub fn new(resource_type: ComputeType, hostname: Hostname, system: SystemArchitecture) -> Self {
        Self {
            id: ResourceId::new(),
            resource_type,
            hostname,
            system,
            capabilities: ResourceCapabilities::default(),
        }
    }

    /// This specification with the given capabilities.
    #[must_use]
    pub fn with_capabilities(mut self, capabilities: ResourceCapabilities) -> Self {
        self.capabilities = capabilities;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_type_serde_and_display() {
        for (ty, name) in [
            (ComputeType::Physical, "physical"),
            (ComputeType::VirtualMachine, "virtual_machine"),
            (ComputeType::Container, "container"),
        ] {
            assert_eq!(ty.to_string(), name);
            let json = serde_json::to_string(&ty).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<ComputeType>(&json).unwrap(), ty);
        }
        assert!(serde_json::from_str::<ComputeType>("\"mainframe\"").is_err());
    }

    #[test]
    fn capabilities_default_is_empty() {
        let c = ResourceCapabilities::default();
        assert_eq!(
            (c.cpu_cores, c.memory_mb, c.storage_gb, c.gpu_count),
            (0, 0, 0, 0)
        );
        assert!(c.metadata.is_empty());
    }

    fn spec() -> ComputeResourceSpec {
        ComputeResourceSpec::new(
            ComputeType::VirtualMachine,
            Hostname::new("vm-7.lab").unwrap(),
            SystemArchitecture::AARCH64_LINUX,
        )
        .with_capabilities(
            ResourceCapabilities {
                cpu_cores: 4,
                memory_mb: 8192,
                storage_gb: 100,
                gpu_count: 1,
                ..Default::default()
            }
            .with_metadata("zone", "b")
            .with_metadata("owner", "ops"),
        )
    }

    #[test]
    fn spec_serde_round_trip() {
        let spec = spec();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["resource_type"], "virtual_machine");
        assert_eq!(json["hostname"], "vm-7.lab");
        assert_eq!(json["system"], "aarch64-linux");
        assert_eq!(json["capabilities"]["metadata"]["owner"], "ops");
        let back: ComputeResourceSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn spec_deserialisation_validates_its_values() {
        let mut json = serde_json::to_value(spec()).unwrap();
        json["hostname"] = "bad_host".into();
        assert!(serde_json::from_value::<ComputeResourceSpec>(json.clone()).is_err());
        json["hostname"] = "ok".into();
        json["system"] = "riscv64-darwin".into();
        assert!(serde_json::from_value::<ComputeResourceSpec>(json).is_err());
    }
}
