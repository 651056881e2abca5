//! Small builders for the infrastructure domain in cross-crate tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use cim_domain_infrastructure::{
    ComputeResourceSpec, ComputeType, Hostname, ResourceCapabilities, ResourceId,
    SystemArchitecture,
};

/// A virtual machine called `hostname`.
pub fn spec(hostname: &str) -> ComputeResourceSpec {
    ComputeResourceSpec {
        id: ResourceId::new(),
        resource_type: ComputeType::VirtualMachine,
        hostname: Hostname::new(hostname).unwrap(),
        system: SystemArchitecture::new("x86_64-linux").unwrap(),
        capabilities: ResourceCapabilities::default(),
    }
}
