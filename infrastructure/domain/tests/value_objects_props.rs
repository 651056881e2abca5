//! Properties of the value objects: host names, system architectures and CIDR networks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use cim_domain_infrastructure::{Cidr, Hostname, SystemArchitecture};
use proptest::prelude::*;

/// A label: 1 to 63 letters, digits and hyphens, not starting or ending with a hyphen.
fn label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
}

/// A top-level label: like [`label`], but starting with a letter so it is never all digits.
fn top_label() -> impl Strategy<Value = String> {
    "[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
}

/// A host name from the RFC 1123 grammar, in mixed case, sometimes fully qualified.
fn hostname() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(label(), 0..5),
        top_label(),
        any::<bool>(),
    )
        .prop_map(|(mut labels, top, trailing_dot)| {
            labels.push(top);
            let mut name = labels.join(".");
            if trailing_dot {
                name.push('.');
            }
            name
        })
        .prop_filter("at most 253 characters", |name| {
            name.trim_end_matches('.').len() <= 253
        })
}

fn ipv4() -> impl Strategy<Value = IpAddr> {
    any::<u32>().prop_map(|bits| IpAddr::V4(Ipv4Addr::from(bits)))
}

fn ipv6() -> impl Strategy<Value = IpAddr> {
    any::<u128>().prop_map(|bits| IpAddr::V6(Ipv6Addr::from(bits)))
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![ipv4(), ipv6()]
}

/// A prefix length valid for the family of `addr`.
fn prefix_for(addr: IpAddr) -> impl Strategy<Value = u8> {
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    0..=max
}

/// Any valid network, IPv4 or IPv6.
fn cidr() -> impl Strategy<Value = Cidr> {
    ip().prop_flat_map(|addr| {
        prefix_for(addr).prop_map(move |prefix| Cidr::truncated(addr, prefix).unwrap())
    })
}

/// An address and a network that contains it.
fn address_in_network() -> impl Strategy<Value = (IpAddr, Cidr)> {
    ip().prop_flat_map(|addr| {
        prefix_for(addr).prop_map(move |prefix| (addr, Cidr::truncated(addr, prefix).unwrap()))
    })
}

fn host_route(addr: IpAddr) -> Cidr {
    let len = if addr.is_ipv4() { 32 } else { 128 };
    Cidr::from_parts(addr, len).unwrap()
}

proptest! {
    #[test]
    fn grammar_hostnames_parse_and_round_trip(name in hostname()) {
        let host = Hostname::new(&name).unwrap();
        let expected = name.strip_suffix('.').unwrap_or(&name).to_ascii_lowercase();
        prop_assert_eq!(host.as_str(), expected.as_str());
        prop_assert_eq!(host.to_string(), expected.clone());
        prop_assert_eq!(Hostname::new(&host).unwrap(), host.clone());
        let json = serde_json::to_string(&host).unwrap();
        prop_assert_eq!(serde_json::from_str::<Hostname>(&json).unwrap(), host);
    }

    #[test]
    fn ipv4_literals_are_valid_hostnames(addr in any::<u32>()) {
        let text = Ipv4Addr::from(addr).to_string();
        let host = Hostname::new(&text).unwrap();
        prop_assert_eq!(host.as_ipv4(), Some(Ipv4Addr::from(addr)));
    }

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        let _ = Hostname::new(&s);
        let _ = Cidr::from_str(&s);
        let _ = SystemArchitecture::new(&s);
    }

    #[test]
    fn near_miss_strings_never_panic_and_accepted_ones_are_valid(
        host in "[a-zA-Z0-9._-]{0,70}",
        net in "[0-9a-fA-F:./]{0,48}",
        system in "[a-z0-9_]{0,8}-?[a-z]{0,8}",
    ) {
        if let Ok(h) = Hostname::new(&host) {
            prop_assert_eq!(Hostname::new(h.as_str()).unwrap(), h);
        }
        if let Ok(c) = Cidr::from_str(&net) {
            prop_assert_eq!(Cidr::from_str(&c.to_string()).unwrap(), c);
            prop_assert!(c.contains(c.network()));
        }
        if let Ok(s) = SystemArchitecture::new(&system) {
            prop_assert_eq!(s.to_string(), system);
        }
    }

    #[test]
    fn network_contains_its_network_address(net in cidr()) {
        prop_assert!(net.contains(net.network()));
        prop_assert!(net.overlaps(&net));
        prop_assert!(net.is_subnet_of(&net));
    }

    #[test]
    fn cidr_round_trips_through_display_and_serde(net in cidr()) {
        prop_assert_eq!(Cidr::new(net.to_string()).unwrap(), net);
        let json = serde_json::to_string(&net).unwrap();
        prop_assert_eq!(serde_json::from_str::<Cidr>(&json).unwrap(), net);
    }

    #[test]
    fn overlaps_is_symmetric(a in cidr(), b in cidr()) {
        prop_assert_eq!(a.overlaps(&b), b.overlaps(&a));
        // Two networks overlap exactly when one contains the other's network address.
        prop_assert_eq!(
            a.overlaps(&b),
            a.contains(b.network()) || b.contains(a.network())
        );
    }

    #[test]
    fn overlaps_is_symmetric_for_related_networks((addr, net) in address_in_network(), shift in 0u8..=128) {
        let width: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let len = net.prefix_len();
        let other = Cidr::truncated(addr, len.saturating_add(shift).min(width)).unwrap();
        prop_assert!(net.overlaps(&other) && other.overlaps(&net));
        prop_assert!(other.is_subnet_of(&net));
    }

    #[test]
    fn host_route_overlaps_every_network_containing_it((addr, net) in address_in_network()) {
        prop_assert!(net.contains(addr));
        let host = host_route(addr);
        prop_assert!(host.overlaps(&net));
        prop_assert!(net.overlaps(&host));
        prop_assert!(host.is_subnet_of(&net));
    }

    #[test]
    fn host_route_overlaps_exactly_the_networks_containing_it(addr in ip(), net in cidr()) {
        let host = host_route(addr);
        prop_assert_eq!(host.overlaps(&net), net.contains(addr));
    }

    #[test]
    fn host_bits_are_rejected_naming_the_network((addr, net) in address_in_network()) {
        match Cidr::from_parts(addr, net.prefix_len()) {
            Ok(exact) => prop_assert_eq!(exact, net),
            Err(err) => {
                prop_assert!(addr != net.network());
                prop_assert!(err.to_string().contains(&net.to_string()), "{}", err);
            }
        }
    }
}
