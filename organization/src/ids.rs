//! Identifiers of the organization domain.
//!
//! [`OrganizationId`] names the aggregate (the last subject token of its events) and
//! [`PersonId`] a person. A department has no id of its own: [`DepartmentId`] is *scoped* in its
//! organization, the pair of the [`OrganizationId`] and a short [`DepartmentCode`] such as
//! `platform`, written `{organization}/{code}`.

use std::fmt;
use std::str::FromStr;

use cim_nats::EntityId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The id of an organization: the aggregate, whose events are all stored on
/// `organization.*.*.{organization_id}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EntityId)]
#[entity_id(aggregate)]
pub struct OrganizationId(Uuid);

/// The id of a person, who can be a member of several departments.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EntityId)]
pub struct PersonId(Uuid);

/// A value that is not a valid department code or department id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid department {what} {value:?}: {rule}")]
pub struct DepartmentIdError {
    what: &'static str,
    value: String,
    rule: &'static str,
}

/// The short name of a department inside its organization: 1 to 32 characters among `a-z`,
/// `0-9` and `-`, starting with a letter (`platform`, `r-and-d`).
///
/// ```
/// use cim_domain_organization::DepartmentCode;
///
/// assert!(DepartmentCode::new("platform").is_ok());
/// assert!(DepartmentCode::new("Platform").is_err());
/// assert!(DepartmentCode::new("a/b").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DepartmentCode(String);

impl DepartmentCode {
    /// A checked department code.
    ///
    /// # Errors
    ///
    /// [`DepartmentIdError`] naming the value and the rule it breaks.
    pub fn new(code: impl Into<String>) -> Result<Self, DepartmentIdError> {
        let code = code.into();
        let rule = if code.is_empty() || code.len() > 32 {
            Some("it must have 1 to 32 characters")
        } else if !code.starts_with(|c: char| c.is_ascii_lowercase()) {
            Some("it must start with a lowercase letter")
        } else if !code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            Some("only a-z, 0-9 and - are allowed")
        } else {
            None
        };
        match rule {
            Some(rule) => Err(DepartmentIdError {
                what: "code",
                value: code,
                rule,
            }),
            None => Ok(Self(code)),
        }
    }

    /// The code as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DepartmentCode {
    type Error = DepartmentIdError;
    fn try_from(code: String) -> Result<Self, Self::Error> {
        Self::new(code)
    }
}

impl From<DepartmentCode> for String {
    fn from(code: DepartmentCode) -> Self {
        code.0
    }
}

impl fmt::Display for DepartmentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A department, scoped in its organization: `{organization}/{code}`.
///
/// It serialises as that string, so it can key a JSON map (a read model's state, a snapshot).
///
/// ```
/// use cim_domain_organization::{DepartmentId, OrganizationId};
///
/// let org = OrganizationId::new();
/// let platform = DepartmentId::new(org, "platform")?;
/// assert_eq!(platform.to_string(), format!("{org}/platform"));
/// assert_eq!(platform.to_string().parse::<DepartmentId>()?, platform);
/// assert_eq!(serde_json::to_string(&platform)?, format!("\"{org}/platform\""));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DepartmentId {
    /// The organization the department belongs to.
    pub organization: OrganizationId,
    /// Its code inside the organization.
    pub code: DepartmentCode,
}

impl DepartmentId {
    /// The department `code` of `organization`.
    ///
    /// # Errors
    ///
    /// [`DepartmentIdError`] if `code` is not a valid [`DepartmentCode`].
    pub fn new(
        organization: OrganizationId,
        code: impl Into<String>,
    ) -> Result<Self, DepartmentIdError> {
        Ok(Self {
            organization,
            code: DepartmentCode::new(code)?,
        })
    }
}

impl fmt::Display for DepartmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.organization, self.code)
    }
}

impl FromStr for DepartmentId {
    type Err = DepartmentIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |rule| DepartmentIdError {
            what: "id",
            value: s.to_owned(),
            rule,
        };
        let (organization, code) = s
            .split_once('/')
            .ok_or_else(|| invalid("expected {organization}/{code}"))?;
        let organization = organization
            .parse()
            .map_err(|_| invalid("the organization is not a UUID"))?;
        Self::new(organization, code)
    }
}

impl TryFrom<String> for DepartmentId {
    type Error = DepartmentIdError;
    fn try_from(id: String) -> Result<Self, Self::Error> {
        id.parse()
    }
}

impl From<DepartmentId> for String {
    fn from(id: DepartmentId) -> Self {
        id.to_string()
    }
}
