//! Values carried by the events: a member's [`Role`]s and the [`InventoryItem`]s a department
//! holds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a member may do in a department.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Owns the department.
    Owner,
    /// Administers its members and inventory.
    Admin,
    /// Leads a team in it.
    Lead,
    /// A regular member.
    Member,
    /// A guest with read access.
    Guest,
}

impl Role {
    /// The role's name, as serialised (`lead`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Lead => "lead",
            Self::Member => "member",
            Self::Guest => "guest",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not a [`Role`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (owner, admin, lead, member or guest)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    /// Parses a role name, ignoring case and surrounding space; `manager` (a name used before
    /// roles were a closed set) is a [`Role::Lead`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "owner" => Ok(Self::Owner),
            "admin" | "administrator" => Ok(Self::Admin),
            "lead" | "manager" => Ok(Self::Lead),
            "member" => Ok(Self::Member),
            "guest" => Ok(Self::Guest),
            _ => Err(UnknownRole(s.to_owned())),
        }
    }
}

/// Something a department holds in its inventory, known by the id another domain gave it
/// (e.g. a compute resource of the infrastructure domain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryItem {
    /// The item's id in the domain that owns it.
    pub id: Uuid,
    /// A human-readable label (a host name, a serial number).
    pub label: String,
}
