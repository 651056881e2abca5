//! IP network address ranges in CIDR notation.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 or IPv6 network in CIDR notation, such as `10.0.0.0/24` or `fd00::/64`.
///
/// The address is the network address: host bits must be zero, so `10.0.0.1/24` is rejected
/// (use [`Cidr::truncated`] to clear them on purpose). The prefix length is 0 to 32 for IPv4 and
/// 0 to 128 for IPv6. Deserialisation validates too.
///
/// ```
/// use cim_domain_infrastructure::{Cidr, CidrError};
/// use std::net::IpAddr;
///
/// let lan: Cidr = "10.0.0.0/24".parse()?;
/// assert!(lan.contains("10.0.0.42".parse::<IpAddr>().unwrap()));
/// assert!(lan.overlaps(&Cidr::new("10.0.0.128/25")?));
/// assert!(!lan.overlaps(&Cidr::new("10.0.1.0/24")?));
///
/// let err = Cidr::new("10.0.0.1/24").unwrap_err();
/// assert!(err.to_string().contains("10.0.0.0/24"));
/// # Ok::<(), CidrError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

/// Why a string or an address and prefix length is not a valid [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CidrError {
    /// No `/` separating the address from the prefix length.
    #[error("invalid CIDR {value:?}: expected \"address/prefix-length\", e.g. \"10.0.0.0/24\"")]
    MissingPrefix {
        /// The rejected input.
        value: String,
    },
    /// The part before the `/` is not an IPv4 or IPv6 address.
    #[error("invalid CIDR {value:?}: {address:?} is not an IPv4 or IPv6 address")]
    InvalidAddress {
        /// The rejected input.
        value: String,
        /// The address part.
        address: String,
    },
    /// The part after the `/` is not a decimal number (without sign or leading zeros).
    #[error("invalid CIDR {value:?}: prefix length {prefix:?} is not a decimal number")]
    InvalidPrefix {
        /// The rejected input.
        value: String,
        /// The prefix part.
        prefix: String,
    },
    /// The prefix length is above 32 (IPv4) or 128 (IPv6).
    #[error("invalid CIDR {value:?}: prefix length must be at most {max} for this address family")]
    PrefixOutOfRange {
        /// The rejected input.
        value: String,
        /// The largest prefix length of the address family.
        max: u8,
    },
    /// The address has bits set beyond the prefix: it is a host address, not a network address.
    #[error("invalid CIDR {value:?}: host bits are set; the network address is {network}")]
    HostBitsSet {
        /// The rejected input.
        value: String,
        /// The network the address belongs to.
        network: Cidr,
    },
}

/// The address as an integer, and its width in bits.
fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

/// The network mask of a `prefix_len` prefix in a `width`-bit address (`prefix_len <= width`).
fn mask(width: u8, prefix_len: u8) -> u128 {
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    let host = if prefix_len == 0 {
        all
    } else {
        (1u128 << (width - prefix_len)) - 1
    };
    all & !host
}

/// The address of the same family as `like` with the given bits.
fn from_bits(like: IpAddr, value: u128) -> IpAddr {
    match like {
        // The value came from a masked IPv4 address: it fits in 32 bits.
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

impl Cidr {
    /// Parses `address/prefix-length`.
    ///
    /// # Errors
    ///
    /// A [`CidrError`] if the text is malformed, the prefix is out of range for the address
    /// family, or host bits are set (the error names the network address).
    pub fn new(cidr: impl AsRef<str>) -> Result<Self, CidrError> {
        let value = cidr.as_ref();
        let Some((address, prefix)) = value.split_once('/') else {
            return Err(CidrError::MissingPrefix {
                value: value.to_owned(),
            });
        };
        let addr: IpAddr = address.parse().map_err(|_| CidrError::InvalidAddress {
            value: value.to_owned(),
            address: address.to_owned(),
        })?;
        let digits_only = !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit());
        let leading_zero = prefix.len() > 1 && prefix.starts_with('0');
        if !digits_only || leading_zero {
            return Err(CidrError::InvalidPrefix {
                value: value.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        let (_, width) = bits(addr);
        // More than three digits without a leading zero is at least 1000: out of range.
        let prefix_len = prefix
            .parse::<u16>()
            .ok()
            .filter(|p| *p <= u16::from(width))
            .ok_or_else(|| CidrError::PrefixOutOfRange {
                value: value.to_owned(),
                max: width,
            })?;
        // `prefix_len <= width <= 128`, so it fits in a u8.
        Self::checked(value, addr, prefix_len as u8)
    }

    /// The network of `network` with prefix length `prefix_len`.
    ///
    /// # Errors
    ///
    /// [`CidrError::PrefixOutOfRange`] or [`CidrError::HostBitsSet`].
    pub fn from_parts(network: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        Self::checked(&format!("{network}/{prefix_len}"), network, prefix_len)
    }

    /// The network of prefix length `prefix_len` that contains `addr`: host bits are cleared.
    ///
    /// ```
    /// use cim_domain_infrastructure::Cidr;
    ///
    /// let net = Cidr::truncated("192.168.7.9".parse().unwrap(), 16).unwrap();
    /// assert_eq!(net.to_string(), "192.168.0.0/16");
    /// ```
    ///
    /// # Errors
    ///
    /// [`CidrError::PrefixOutOfRange`] if `prefix_len` is above the family's address width.
    pub fn truncated(addr: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        let (value, width) = bits(addr);
        if prefix_len > width {
            return Err(CidrError::PrefixOutOfRange {
                value: format!("{addr}/{prefix_len}"),
                max: width,
            });
        }
        Ok(Self {
            network: from_bits(addr, value & mask(width, prefix_len)),
            prefix_len,
        })
    }

    fn checked(value: &str, addr: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        let network =
            Self::truncated(addr, prefix_len).map_err(|_| CidrError::PrefixOutOfRange {
                value: value.to_owned(),
                max: bits(addr).1,
            })?;
        if network.network != addr {
            return Err(CidrError::HostBitsSet {
                value: value.to_owned(),
                network,
            });
        }
        Ok(network)
    }

    /// The network address (host bits all zero).
    pub const fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length: the number of leading bits that identify the network.
    pub const fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether this is an IPv4 network.
    pub const fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }

    /// Whether this is an IPv6 network.
    pub const fn is_ipv6(&self) -> bool {
        self.network.is_ipv6()
    }

    /// The network mask, e.g. `255.255.255.0` for a `/24`.
    pub fn netmask(&self) -> IpAddr {
        let (_, width) = bits(self.network);
        from_bits(self.network, mask(width, self.prefix_len))
    }

    /// Whether `addr` is in this network. An address of the other family never is.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let (net, width) = bits(self.network);
        let (value, addr_width) = bits(addr);
        width == addr_width && value & mask(width, self.prefix_len) == net
    }

    /// Whether the two networks share at least one address. IPv4 and IPv6 networks never do.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let (a, width) = bits(self.network);
        let (b, other_width) = bits(other.network);
        if width != other_width {
            return false;
        }
        let common = mask(width, self.prefix_len.min(other.prefix_len));
        a & common == b & common
    }

    /// Whether every address of this network is in `other`.
    pub fn is_subnet_of(&self, other: &Cidr) -> bool {
        self.prefix_len >= other.prefix_len && other.contains(self.network)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for Cidr {
    type Error = CidrError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> Self {
        cidr.to_string()
    }
}

impl fmt::Display for Cidr {
    /// `address/prefix-length`, the IPv6 address in its compressed form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cidr({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_ipv4_and_ipv6() {
        let v4 = cidr("10.0.0.0/24");
        assert_eq!(v4.network(), ip("10.0.0.0"));
        assert_eq!(v4.prefix_len(), 24);
        assert!(v4.is_ipv4() && !v4.is_ipv6());
        assert_eq!(v4.netmask(), ip("255.255.255.0"));

        let v6 = cidr("fd00:0:0:1::/64");
        assert_eq!(v6.to_string(), "fd00:0:0:1::/64");
        assert!(v6.is_ipv6());
        assert_eq!(v6.netmask(), ip("ffff:ffff:ffff:ffff::"));

        assert_eq!(cidr("0.0.0.0/0").netmask(), ip("0.0.0.0"));
        assert_eq!(cidr("::/0").netmask(), ip("::"));
        assert_eq!(cidr("10.1.2.3/32").netmask(), ip("255.255.255.255"));
        assert_eq!(cidr("::1/128").network(), ip("::1"));
        assert_eq!(
            "192.168.0.0/16".parse::<Cidr>().unwrap(),
            cidr("192.168.0.0/16")
        );
    }

    #[test]
    fn display_is_canonical() {
        assert_eq!(cidr("FD00:0000::/16").to_string(), "fd00::/16");
        assert_eq!(format!("{:?}", cidr("10.0.0.0/8")), "Cidr(10.0.0.0/8)");
        assert_eq!(String::from(cidr("10.0.0.0/8")), "10.0.0.0/8");
    }

    #[test]
    fn rejects_missing_prefix() {
        for bad in ["", "10.0.0.0", "fd00::"] {
            assert_eq!(
                Cidr::new(bad),
                Err(CidrError::MissingPrefix {
                    value: bad.to_owned()
                })
            );
        }
    }

    #[test]
    fn rejects_invalid_address() {
        let err = Cidr::new("10.0.0/24").unwrap_err();
        assert_eq!(
            err,
            CidrError::InvalidAddress {
                value: "10.0.0/24".into(),
                address: "10.0.0".into()
            }
        );
        assert!(err.to_string().contains("\"10.0.0\""));
        for bad in [
            "/24",
            "999.0.0.0/8",
            "host/24",
            "fe80::1%eth0/64",
            " 10.0.0.0/8",
        ] {
            assert!(
                matches!(Cidr::new(bad), Err(CidrError::InvalidAddress { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_invalid_prefix() {
        for bad in [
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/024",
            "10.0.0.0/8 ",
            "10.0.0.0/a",
            "10.0.0.0/8/8",
        ] {
            assert!(
                matches!(Cidr::new(bad), Err(CidrError::InvalidPrefix { .. })),
                "{bad}: {:?}",
                Cidr::new(bad)
            );
        }
        let msg = Cidr::new("10.0.0.0/x").unwrap_err().to_string();
        assert!(msg.contains("\"x\""), "{msg}");
    }

    #[test]
    fn rejects_prefix_out_of_range() {
        assert_eq!(
            Cidr::new("10.0.0.0/33"),
            Err(CidrError::PrefixOutOfRange {
                value: "10.0.0.0/33".into(),
                max: 32
            })
        );
        assert_eq!(
            Cidr::new("::/129"),
            Err(CidrError::PrefixOutOfRange {
                value: "::/129".into(),
                max: 128
            })
        );
        assert!(matches!(
            Cidr::new("::/99999999999999999999999"),
            Err(CidrError::PrefixOutOfRange { max: 128, .. })
        ));
        assert!(cidr("10.0.0.0/32").prefix_len() == 32);
        assert!(cidr("::/128").prefix_len() == 128);
        assert!(matches!(
            Cidr::from_parts(ip("10.0.0.0"), 40),
            Err(CidrError::PrefixOutOfRange { max: 32, .. })
        ));
        assert!(matches!(
            Cidr::truncated(ip("::"), 200),
            Err(CidrError::PrefixOutOfRange { max: 128, .. })
        ));
        assert!(Cidr::new("10.0.0.0/33")
            .unwrap_err()
            .to_string()
            .contains("at most 32"));
    }

    #[test]
    fn rejects_host_bits_naming_the_network() {
        let err = Cidr::new("10.0.0.1/24").unwrap_err();
        assert_eq!(
            err,
            CidrError::HostBitsSet {
                value: "10.0.0.1/24".into(),
                network: cidr("10.0.0.0/24")
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid CIDR \"10.0.0.1/24\": host bits are set; the network address is 10.0.0.0/24"
        );
        assert!(matches!(
            Cidr::new("fd00::1/64"),
            Err(CidrError::HostBitsSet { network, .. }) if network == cidr("fd00::/64")
        ));
        assert!(matches!(
            Cidr::from_parts(ip("192.168.1.1"), 16),
            Err(CidrError::HostBitsSet { .. })
        ));
        assert_eq!(
            Cidr::from_parts(ip("192.168.0.0"), 16).unwrap(),
            cidr("192.168.0.0/16")
        );
    }

    #[test]
    fn contains() {
        let net = cidr("10.0.0.0/24");
        assert!(net.contains(ip("10.0.0.0")));
        assert!(net.contains(ip("10.0.0.255")));
        assert!(!net.contains(ip("10.0.1.0")));
        assert!(!net.contains(ip("::ffff:10.0.0.1")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!cidr("0.0.0.0/0").contains(ip("::1")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        assert!(cidr("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!cidr("2001:db8::/32").contains(ip("2001:db9::")));
    }

    #[test]
    fn overlaps_and_subnets() {
        let a = cidr("10.0.0.0/16");
        let b = cidr("10.0.5.0/24");
        let c = cidr("10.1.0.0/16");
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&a));
        assert!(a.overlaps(&a));
        assert!(b.is_subnet_of(&a) && !a.is_subnet_of(&b) && a.is_subnet_of(&a));
        assert!(!c.is_subnet_of(&a));
        // The families never overlap, even for the whole address space.
        assert!(!cidr("0.0.0.0/0").overlaps(&cidr("::/0")));
        assert!(!cidr("::ffff:0:0/96").overlaps(&cidr("10.0.0.0/8")));
        assert!(cidr("fd00::/8").overlaps(&cidr("fd12:3456::/32")));
    }

    #[test]
    fn truncated_clears_host_bits() {
        assert_eq!(
            Cidr::truncated(ip("10.9.8.7"), 8).unwrap(),
            cidr("10.0.0.0/8")
        );
        assert_eq!(
            Cidr::truncated(ip("fd00::abcd"), 112).unwrap(),
            cidr("fd00::/112")
        );
        assert_eq!(
            Cidr::truncated(ip("1.2.3.4"), 0).unwrap(),
            cidr("0.0.0.0/0")
        );
    }

    #[test]
    fn serde_round_trip_and_validation() {
        for text in ["10.0.0.0/24", "2001:db8::/48"] {
            let net = cidr(text);
            let json = serde_json::to_string(&net).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Cidr>(&json).unwrap(), net);
        }
        assert!(serde_json::from_str::<Cidr>("\"10.0.0.1/24\"").is_err());
        assert!(serde_json::from_str::<Cidr>("\"10.0.0.0/33\"").is_err());
        assert!(serde_json::from_str::<Cidr>("\"10.0.0.0\"").is_err());
    }
}
