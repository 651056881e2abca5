//! NATS subjects and the validated tokens they are built from.
//!
//! Every token that comes from user data (an aggregate id, a domain name) is checked before it is
//! put into a subject: it must not be empty and must not contain whitespace, `.`, `*` or `>`.
//! So an id can never widen a subscription (`*`, `>`) or reach into another subject (`.`).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a subject or token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidReason {
    /// The token is empty.
    Empty,
    /// The token contains the given character, which may not appear in a subject token.
    ForbiddenChar(char),
    /// The value is longer than the limit.
    TooLong {
        /// The limit, in bytes.
        max: usize,
    },
}

/// A subject or subject token that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subject token {value:?}: {}", describe(.reason))]
pub struct InvalidSubject {
    value: String,
    reason: InvalidReason,
}

fn describe(reason: &InvalidReason) -> String {
    match reason {
        InvalidReason::Empty => "it is empty".to_owned(),
        InvalidReason::ForbiddenChar(c) if c.is_whitespace() => "it contains whitespace".to_owned(),
        InvalidReason::ForbiddenChar(c) => format!("it contains {c:?}"),
        InvalidReason::TooLong { max } => format!("it is longer than {max} bytes"),
    }
}

impl InvalidSubject {
    /// The refused value.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Why it was refused.
    pub fn reason(&self) -> &InvalidReason {
        &self.reason
    }
}

/// Longest aggregate id accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 256;

/// Checks that `token` can stand as one token of a NATS subject: not empty, no whitespace or
/// control characters, no `.`, `*` or `>`.
///
/// # Errors
///
/// [`InvalidSubject`] naming the value and the reason.
pub fn validate_token(token: &str) -> Result<(), InvalidSubject> {
    let fail = |reason| {
        Err(InvalidSubject {
            value: token.to_owned(),
            reason,
        })
    };
    if token.is_empty() {
        return fail(InvalidReason::Empty);
    }
    if token.len() > MAX_TOKEN_LEN {
        return fail(InvalidReason::TooLong { max: MAX_TOKEN_LEN });
    }
    if let Some(c) = token
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
    {
        return fail(InvalidReason::ForbiddenChar(c));
    }
    Ok(())
}

/// Checks a whole subject (tokens separated by `.`); wildcards are allowed only when
/// `allow_wildcards` is set, and then only as whole tokens (`*` anywhere, `>` last).
///
/// # Errors
///
/// [`InvalidSubject`] naming the subject and the reason.
pub fn validate_subject(subject: &str, allow_wildcards: bool) -> Result<(), InvalidSubject> {
    let fail = |reason| {
        Err(InvalidSubject {
            value: subject.to_owned(),
            reason,
        })
    };
    if subject.is_empty() {
        return fail(InvalidReason::Empty);
    }
    let count = subject.split('.').count();
    for (i, token) in subject.split('.').enumerate() {
        if allow_wildcards && (token == "*" || (token == ">" && i + 1 == count)) {
            continue;
        }
        if let Err(e) = validate_token(token) {
            return fail(e.reason);
        }
    }
    Ok(())
}

/// The id of one aggregate instance: a validated subject token.
///
/// It is the last token of every stored subject of the aggregate, so it is checked on
/// construction and on deserialisation.
///
/// ```
/// use cim_nats::AggregateId;
///
/// let id = AggregateId::new("5f0c6a1e-0b7e-4f7c-9d38-2f1d3b7d0c11").unwrap();
/// assert_eq!(id.as_str(), "5f0c6a1e-0b7e-4f7c-9d38-2f1d3b7d0c11");
/// assert!(AggregateId::new("a.b").is_err());
/// assert!(AggregateId::new("*").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregateId(Arc<str>);

impl AggregateId {
    /// A validated aggregate id.
    ///
    /// # Errors
    ///
    /// [`InvalidSubject`] if `id` is empty, longer than [`MAX_TOKEN_LEN`], or contains
    /// whitespace, `.`, `*` or `>`.
    pub fn new(id: impl AsRef<str>) -> Result<Self, InvalidSubject> {
        let id = id.as_ref();
        validate_token(id)?;
        Ok(Self(Arc::from(id)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<uuid::Uuid> for AggregateId {
    fn from(id: uuid::Uuid) -> Self {
        // A hyphenated UUID is always a valid token.
        let mut buf = uuid::Uuid::encode_buffer();
        Self(Arc::from(&*id.hyphenated().encode_lower(&mut buf)))
    }
}

impl TryFrom<&str> for AggregateId {
    type Error = InvalidSubject;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<String> for AggregateId {
    type Error = InvalidSubject;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl std::str::FromStr for AggregateId {
    type Err = InvalidSubject;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for AggregateId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AggregateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AggregateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AggregateId({:?})", &*self.0)
    }
}

impl Serialize for AggregateId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AggregateId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::new(&*s).map_err(serde::de::Error::custom)
    }
}

/// A concrete NATS subject (no wildcards), validated token by token.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(String);

impl Subject {
    /// A validated concrete subject.
    ///
    /// # Errors
    ///
    /// [`InvalidSubject`] if a token is empty or contains whitespace, `*` or `>`.
    pub fn new(subject: impl Into<String>) -> Result<Self, InvalidSubject> {
        let subject = subject.into();
        validate_subject(&subject, false)?;
        Ok(Self(subject))
    }

    /// The stored subject of an event: its routing subject (`{domain}.{aggregate}.{operation}`,
    /// static and already validated by the derive) followed by the aggregate id.
    pub fn for_event(routing: &str, aggregate_id: &AggregateId) -> Self {
        let mut s = String::with_capacity(routing.len() + 1 + aggregate_id.as_str().len());
        s.push_str(routing);
        s.push('.');
        s.push_str(aggregate_id.as_str());
        Self(s)
    }

    /// The subjects of all of one aggregate's events, `{domain}.*.*.{aggregate_id}`: the scope of
    /// the store's concurrency check (`Nats-Expected-Last-Subject-Sequence-Subject`) and of the
    /// last-event lookup. The one place this filter is written.
    pub fn aggregate_scope(domain: &str, aggregate_id: &AggregateId) -> String {
        let mut s = String::with_capacity(domain.len() + 5 + aggregate_id.as_str().len());
        s.push_str(domain);
        s.push_str(".*.*.");
        s.push_str(aggregate_id.as_str());
        s
    }

    /// The subject as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject's tokens.
    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }

    /// Consumes the subject, returning the string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subject({:?})", self.0)
    }
}

impl AsRef<str> for Subject {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Subject> for String {
    fn from(s: Subject) -> Self {
        s.0
    }
}

/// Does the concrete `subject` match the `pattern` (which may hold `*` and a final `>`)?
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Do two subject patterns have at least one concrete subject in common?
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_validated() {
        assert!(validate_token("abc-123_X").is_ok());
        for bad in ["", "a.b", "a*", ">", "a b", "a\tb", "a\nb", "\u{0}"] {
            assert!(validate_token(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(validate_token(&"x".repeat(MAX_TOKEN_LEN + 1)).is_err());
    }

    #[test]
    fn error_names_value_and_reason() {
        let err = AggregateId::new("a.b").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid subject token "a.b": it contains '.'"#
        );
        let err = AggregateId::new("a b").unwrap_err();
        assert!(err.to_string().contains("whitespace"));
    }

    #[test]
    fn subjects_and_wildcards() {
        assert!(validate_subject("a.b.c", false).is_ok());
        assert!(validate_subject("a.*.c", false).is_err());
        assert!(validate_subject("a.*.>", true).is_ok());
        assert!(validate_subject("a.>.c", true).is_err());
        assert!(validate_subject("a..c", true).is_err());
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subjects_overlap("a.>", "a.b.*"));
        assert!(subjects_overlap("*.b", "a.*"));
        assert!(!subjects_overlap("a.>", "b.>"));
        assert!(!subjects_overlap("a.b", "a.b.c"));
    }

    #[test]
    fn aggregate_id_from_uuid_and_serde() {
        let u = uuid::Uuid::now_v7();
        let id = AggregateId::from(u);
        assert_eq!(id.as_str(), u.to_string());
        let json = serde_json::to_string(&id).unwrap();
        let back: AggregateId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<AggregateId>("\"a.>\"").is_err());
    }
}
