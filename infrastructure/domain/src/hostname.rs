//! Host names, validated against RFC 1123.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest host name, in characters, without the optional trailing dot.
pub const MAX_HOSTNAME_LEN: usize = 253;

/// Longest label (the part between two dots), in characters.
pub const MAX_LABEL_LEN: usize = 63;

/// A valid host name (RFC 1123), stored in lowercase.
///
/// Rules:
/// - 1 to [`MAX_HOSTNAME_LEN`] characters; a single trailing dot (the fully qualified form) is
///   accepted and dropped;
/// - dot-separated labels of 1 to [`MAX_LABEL_LEN`] characters, each made of ASCII letters,
///   digits and hyphens, neither starting nor ending with a hyphen;
/// - host names compare case-insensitively, so they are stored in lowercase;
/// - the last label is never all digits, except in a dotted-quad IPv4 literal such as
///   `10.0.0.1`, which is accepted only if it is a valid IPv4 address.
///
/// Deserialisation applies the same rules.
///
/// ```
/// use cim_domain_infrastructure::{Hostname, HostnameError};
///
/// let host = Hostname::new("Server01.Example.COM.")?;
/// assert_eq!(host.as_str(), "server01.example.com");
/// assert_eq!(host.labels().collect::<Vec<_>>(), ["server01", "example", "com"]);
///
/// assert!(Hostname::new("10.0.0.1")?.as_ipv4().is_some());
/// assert!(matches!(
///     Hostname::new("-bad"),
///     Err(HostnameError::LabelStartsWithHyphen { .. })
/// ));
/// # Ok::<(), HostnameError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hostname(String);

/// Why a string is not a valid [`Hostname`].
///
/// Every message names the rejected value and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostnameError {
    /// The host name is empty (or is a lone dot).
    #[error("invalid hostname {hostname:?}: a hostname must not be empty")]
    Empty {
        /// The rejected input.
        hostname: String,
    },
    /// The host name is longer than [`MAX_HOSTNAME_LEN`].
    #[error(
        "invalid hostname {hostname:?}: {len} characters long, at most {MAX_HOSTNAME_LEN} allowed"
    )]
    TooLong {
        /// The rejected input.
        hostname: String,
        /// Its length, without the trailing dot.
        len: usize,
    },
    /// Two consecutive dots, a leading dot, or more than one trailing dot.
    #[error("invalid hostname {hostname:?}: empty label (leading dot or two dots in a row)")]
    EmptyLabel {
        /// The rejected input.
        hostname: String,
    },
    /// A label is longer than [`MAX_LABEL_LEN`].
    #[error(
        "invalid hostname {hostname:?}: label {label:?} is {len} characters long, at most {MAX_LABEL_LEN} allowed"
    )]
    LabelTooLong {
        /// The rejected input.
        hostname: String,
        /// The offending label.
        label: String,
        /// Its length.
        len: usize,
    },
    /// A label holds a character other than an ASCII letter, digit or hyphen.
    #[error(
        "invalid hostname {hostname:?}: label {label:?} contains {character:?}, only ASCII letters, digits and '-' are allowed"
    )]
    InvalidCharacter {
        /// The rejected input.
        hostname: String,
        /// The offending label.
        label: String,
        /// The first character that is not allowed.
        character: char,
    },
    /// A label starts with a hyphen.
    #[error("invalid hostname {hostname:?}: label {label:?} starts with a hyphen")]
    LabelStartsWithHyphen {
        /// The rejected input.
        hostname: String,
        /// The offending label.
        label: String,
    },
    /// A label ends with a hyphen.
    #[error("invalid hostname {hostname:?}: label {label:?} ends with a hyphen")]
    LabelEndsWithHyphen {
        /// The rejected input.
        hostname: String,
        /// The offending label.
        label: String,
    },
    /// The last label is all digits, and the name is not a dotted-quad IPv4 literal.
    #[error(
        "invalid hostname {hostname:?}: the top-level label {label:?} is all digits (only a dotted-quad IPv4 address may end in digits)"
    )]
    NumericTopLevelLabel {
        /// The rejected input.
        hostname: String,
        /// The top-level label.
        label: String,
    },
    /// Four numeric labels that do not form a valid IPv4 address, e.g. `999.1.1.1`.
    #[error(
        "invalid hostname {hostname:?}: looks like an IPv4 address but is not a valid one (four decimal octets 0-255, no leading zeros)"
    )]
    InvalidIpv4 {
        /// The rejected input.
        hostname: String,
    },
}

impl Hostname {
    /// Validates `hostname` and stores it in lowercase, without a trailing dot.
    ///
    /// # Errors
    ///
    /// A [`HostnameError`] naming the value and the rule it breaks.
    pub fn new(hostname: impl AsRef<str>) -> Result<Self, HostnameError> {
        let input = hostname.as_ref();
        validate(input).map(|name| Self(name.to_ascii_lowercase()))
    }

    /// The host name, lowercase, without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dot-separated labels, from the host's own label to the top-level one.
    pub fn labels(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.split('.')
    }

    /// The address, if this host name is a dotted-quad IPv4 literal.
    pub fn as_ipv4(&self) -> Option<Ipv4Addr> {
        self.0.parse().ok()
    }

    /// The host name as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Checks `input` and returns it without its trailing dot.
fn validate(input: &str) -> Result<&str, HostnameError> {
    let owned = || input.to_owned();
    let name = input.strip_suffix('.').unwrap_or(input);
    if name.is_empty() {
        return Err(HostnameError::Empty { hostname: owned() });
    }
    let len = name.chars().count();
    if len > MAX_HOSTNAME_LEN {
        return Err(HostnameError::TooLong {
            hostname: owned(),
            len,
        });
    }
    for label in name.split('.') {
        validate_label(input, label)?;
    }
    let top = name.rsplit('.').next().unwrap_or(name);
    if top.bytes().all(|b| b.is_ascii_digit()) {
        if name.split('.').count() == 4
            && name
                .split('.')
                .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            return match name.parse::<Ipv4Addr>() {
                Ok(_) => Ok(name),
                Err(_) => Err(HostnameError::InvalidIpv4 { hostname: owned() }),
            };
        }
        return Err(HostnameError::NumericTopLevelLabel {
            hostname: owned(),
            label: top.to_owned(),
        });
    }
    Ok(name)
}

fn validate_label(input: &str, label: &str) -> Result<(), HostnameError> {
    let hostname = || input.to_owned();
    if label.is_empty() {
        return Err(HostnameError::EmptyLabel {
            hostname: hostname(),
        });
    }
    if let Some(character) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(HostnameError::InvalidCharacter {
            hostname: hostname(),
            label: label.to_owned(),
            character,
        });
    }
    // Only ASCII from here on: byte length is character length.
    if label.len() > MAX_LABEL_LEN {
        return Err(HostnameError::LabelTooLong {
            hostname: hostname(),
            label: label.to_owned(),
            len: label.len(),
        });
    }
    if label.starts_with('-') {
        return Err(HostnameError::LabelStartsWithHyphen {
            hostname: hostname(),
            label: label.to_owned(),
        });
    }
    if label.ends_with('-') {
        return Err(HostnameError::LabelEndsWithHyphen {
            hostname: hostname(),
            label: label.to_owned(),
        });
    }
    Ok(())
}

impl FromStr for Hostname {
    type Err = HostnameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for Hostname {
    type Error = HostnameError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for Hostname {
    type Error = HostnameError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Hostname> for String {
    fn from(hostname: Hostname) -> Self {
        hostname.0
    }
}

impl AsRef<str> for Hostname {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hostname({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        Hostname::new(s)
            .unwrap_or_else(|e| panic!("{s:?} should be accepted: {e}"))
            .into_string()
    }

    #[test]
    fn accepts_valid_names() {
        assert_eq!(ok("server01"), "server01");
        assert_eq!(ok("a"), "a");
        assert_eq!(ok("db-1.eu-west.example.com"), "db-1.eu-west.example.com");
        assert_eq!(ok("1server.example"), "1server.example");
        assert_eq!(ok("x.123abc"), "x.123abc");
        assert_eq!(ok(&"a".repeat(63)), "a".repeat(63));
    }

    #[test]
    fn stores_lowercase_and_drops_one_trailing_dot() {
        assert_eq!(ok("Server01.Example.COM"), "server01.example.com");
        assert_eq!(ok("host.example.com."), "host.example.com");
        assert_eq!(
            Hostname::new("HOST").unwrap(),
            Hostname::new("host.").unwrap()
        );
    }

    #[test]
    fn accepts_valid_ipv4_literals_only() {
        assert_eq!(ok("10.0.0.1"), "10.0.0.1");
        assert_eq!(ok("255.255.255.255."), "255.255.255.255");
        assert_eq!(
            Hostname::new("192.168.1.20").unwrap().as_ipv4(),
            Some(Ipv4Addr::new(192, 168, 1, 20))
        );
        assert_eq!(Hostname::new("server01").unwrap().as_ipv4(), None);
        for bad in ["999.1.1.1", "256.0.0.1", "01.2.3.4", "1.2.3.0400"] {
            let err = Hostname::new(bad).unwrap_err();
            assert_eq!(
                err,
                HostnameError::InvalidIpv4 {
                    hostname: bad.to_owned()
                },
                "{bad}"
            );
        }
        let msg = Hostname::new("999.1.1.1").unwrap_err().to_string();
        assert!(
            msg.contains("\"999.1.1.1\"") && msg.contains("IPv4"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_numeric_top_level_label() {
        for bad in ["123", "1.2.3", "host.42", "1.2.3.4.5"] {
            assert!(
                matches!(
                    Hostname::new(bad),
                    Err(HostnameError::NumericTopLevelLabel { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_empty() {
        for bad in ["", "."] {
            assert_eq!(
                Hostname::new(bad),
                Err(HostnameError::Empty {
                    hostname: bad.to_owned()
                })
            );
        }
    }

    #[test]
    fn rejects_too_long() {
        let label = "a".repeat(63);
        let name = [label.as_str(); 4].join("."); // 255 characters
        let err = Hostname::new(&name).unwrap_err();
        assert!(
            matches!(err, HostnameError::TooLong { len: 255, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("at most 253"));
        // 253 characters is fine, with or without the trailing dot.
        let max = format!("{}.{}.{}.{}", label, label, label, "a".repeat(61));
        assert_eq!(max.len(), 253);
        assert!(Hostname::new(&max).is_ok());
        assert!(Hostname::new(format!("{max}.")).is_ok());
    }

    #[test]
    fn rejects_empty_labels() {
        for bad in [".host", "a..b", "host..", "..", "a.b.."] {
            assert!(
                matches!(Hostname::new(bad), Err(HostnameError::EmptyLabel { .. })),
                "{bad}: {:?}",
                Hostname::new(bad)
            );
        }
    }

    #[test]
    fn rejects_long_labels() {
        let long = "a".repeat(64);
        let err = Hostname::new(format!("{long}.com")).unwrap_err();
        assert_eq!(
            err,
            HostnameError::LabelTooLong {
                hostname: format!("{long}.com"),
                label: long,
                len: 64
            }
        );
        assert!(err.to_string().contains("at most 63"));
    }

    #[test]
    fn rejects_invalid_characters() {
        for (bad, ch) in [
            ("under_score", '_'),
            ("sp ace", ' '),
            ("caf\u{e9}", '\u{e9}'),
            ("a/b", '/'),
            ("*.example.com", '*'),
        ] {
            match Hostname::new(bad) {
                Err(HostnameError::InvalidCharacter { character, .. }) => assert_eq!(character, ch),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let msg = Hostname::new("under_score").unwrap_err().to_string();
        assert!(
            msg.contains("\"under_score\"") && msg.contains("'_'"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_hyphens_at_label_edges() {
        assert_eq!(
            Hostname::new("-bad"),
            Err(HostnameError::LabelStartsWithHyphen {
                hostname: "-bad".into(),
                label: "-bad".into()
            })
        );
        assert_eq!(
            Hostname::new("good.bad-.com"),
            Err(HostnameError::LabelEndsWithHyphen {
                hostname: "good.bad-.com".into(),
                label: "bad-".into()
            })
        );
        assert!(Hostname::new("a-b").is_ok());
        assert!(Hostname::new("-").is_err());
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let host = Hostname::new("Web-01.Example.org").unwrap();
        let json = serde_json::to_string(&host).unwrap();
        assert_eq!(json, "\"web-01.example.org\"");
        assert_eq!(serde_json::from_str::<Hostname>(&json).unwrap(), host);
        // Deserialising normalises too.
        assert_eq!(
            serde_json::from_str::<Hostname>("\"WEB-01.example.org.\"").unwrap(),
            host
        );
        assert!(serde_json::from_str::<Hostname>("\"-bad\"").is_err());
        assert!(serde_json::from_str::<Hostname>("\"999.1.1.1\"").is_err());
        assert!(serde_json::from_str::<Hostname>("\"\"").is_err());
        let err = serde_json::from_str::<Hostname>("\"a_b\"").unwrap_err();
        assert!(err.to_string().contains("a_b"), "{err}");
    }

    #[test]
    fn conversions_and_display() {
        let host: Hostname = "Node1".parse().unwrap();
        assert_eq!(host.to_string(), "node1");
        assert_eq!(format!("{host:?}"), "Hostname(\"node1\")");
        assert_eq!(Hostname::try_from("node1").unwrap(), host);
        assert_eq!(Hostname::try_from(String::from("NODE1")).unwrap(), host);
        assert_eq!(String::from(host.clone()), "node1");
        assert_eq!(host.as_ref(), "node1");
    }
}
