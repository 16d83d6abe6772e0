//! Which IP addresses an outbound fetch may connect to ([`address_allowed`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// IPv4 blocks that are never fetched from.
const V4_DENIED: [Ipv4Net; 17] = [
    Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8), // "this network", incl. 0.0.0.0
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8), // private (RFC 1918)
    Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10), // shared address space, CGNAT (RFC 6598)
    Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8), // loopback
    Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16), // link-local, cloud metadata
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12), // private (RFC 1918)
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 0, 0), 24), // IETF protocol assignments
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 2, 0), 24), // documentation, TEST-NET-1
    Ipv4Net::new_assert(Ipv4Addr::new(192, 88, 99, 0), 24), // 6to4 relay anycast (deprecated)
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16), // private (RFC 1918)
    Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15), // benchmarking (RFC 2544)
    Ipv4Net::new_assert(Ipv4Addr::new(198, 51, 100, 0), 24), // documentation, TEST-NET-2
    Ipv4Net::new_assert(Ipv4Addr::new(203, 0, 113, 0), 24), // documentation, TEST-NET-3
    Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4), // multicast
    Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4), // reserved, incl. broadcast
    // Inside the blocks above, listed for the reader of the SSRF contract:
    Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 169, 254), 32), // cloud metadata service
    Ipv4Net::new_assert(Ipv4Addr::new(255, 255, 255, 255), 32), // limited broadcast
];

/// The only IPv6 block with fetchable addresses: global unicast.
const V6_GLOBAL_UNICAST: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);

/// Blocks inside `2000::/3` that are never fetched from.
const V6_DENIED: [Ipv6Net; 3] = [
    // IETF protocol assignments: Teredo (2001::/32), benchmarking
    // (2001:2::/48), ORCHID, AMT, AS112 …
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0x0db8, 0, 0, 0, 0, 0, 0), 32), // documentation
    Ipv6Net::new_assert(Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),      // documentation (RFC 9637)
];

/// NAT64's well-known prefix (RFC 6052): the last 32 bits are an IPv4 address.
const V6_NAT64: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96);

/// 6to4 (RFC 3056): bits 16..48 are an IPv4 address.
const V6_6TO4: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16);

/// Whether a fetch may connect to `ip`.
///
/// An IPv4 address must be outside every block of the IANA special-purpose
/// registry that is not globally reachable (private, loopback, link-local,
/// CGNAT, documentation, benchmarking, "this network") and outside
/// multicast and the reserved `240.0.0.0/4`. IPv6 is judged by an
/// allow-list: the address must be global unicast (`2000::/3`) and outside
/// the special-purpose blocks inside it, so unique-local, link-local,
/// site-local, multicast, `::` and `::1` are refused. IPv6 forms that embed an IPv4 address
/// (IPv4-mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are
/// judged by the IPv4 address they carry. Teredo and the rest of
/// `2001::/23`, the deprecated IPv4-compatible `::/96`, NAT64's local-use
/// `64:ff9b:1::/48` and SRv6's `5f00::/16` are refused outright.
///
/// In development (`dev_loopback`) the loopback addresses `127.0.0.0/8` and
/// `::1` are allowed too, and nothing else: `0.0.0.0`, `::`, the
/// IPv4-mapped `::ffff:127.0.0.1` and every private range stay refused.
#[must_use]
pub fn address_allowed(ip: IpAddr, dev_loopback: bool) -> bool {
    if dev_loopback && is_dev_loopback(ip) {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => v4_public(v4),
        IpAddr::V6(v6) => v6_public(v6),
    }
}

/// The loopback addresses `dev_loopback` opens: `127.0.0.0/8` and `::1`,
/// written as such (not IPv4-mapped).
fn is_dev_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    }
}

fn v4_public(ip: Ipv4Addr) -> bool {
    !V4_DENIED.iter().any(|net| net.contains(&ip))
}

fn v6_public(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_public(v4);
    }
    if V6_NAT64.contains(&ip) {
        return v4_public(embedded_v4(ip, 12));
    }
    if !V6_GLOBAL_UNICAST.contains(&ip) || V6_DENIED.iter().any(|net| net.contains(&ip)) {
        return false;
    }
    if V6_6TO4.contains(&ip) {
        return v4_public(embedded_v4(ip, 2));
    }
    true
}

/// The IPv4 address held in the four bytes of `ip` from byte `at` on.
fn embedded_v4(ip: Ipv6Addr, at: usize) -> Ipv4Addr {
    let octets = ip.octets();
    let mut v4 = [0u8; 4];
    for (slot, byte) in v4.iter_mut().zip(octets.iter().skip(at)) {
        *slot = *byte;
    }
    Ipv4Addr::from(v4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(s: &str, dev: bool) -> bool {
        let ip: IpAddr = s.parse().unwrap();
        address_allowed(ip, dev)
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255", // just below CGNAT
            "100.128.0.0",    // just above CGNAT
            "172.15.255.255", // just below 172.16/12
            "172.32.0.0",     // just above
            "192.0.3.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:81c::200e",
            "2001:4860:4860::8888", // outside 2001::/23
            "2002:0808:0808::1",    // 6to4 of 8.8.8.8
            "64:ff9b::808:808",     // NAT64 of 8.8.8.8
            "::ffff:8.8.8.8",       // IPv4-mapped public
        ] {
            assert!(allowed(ip, false), "{ip} should be allowed");
            assert!(allowed(ip, true), "{ip} should be allowed in dev");
        }
    }

    #[test]
    fn special_ipv4_addresses_are_refused() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!allowed(ip, false), "{ip} should be refused");
        }
    }

    #[test]
    fn special_ipv6_addresses_are_refused() {
        for ip in [
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",        // IPv4-compatible (deprecated)
            "::8.8.8.8",          // IPv4-compatible, even of a public address
            "64:ff9b::7f00:1",    // NAT64 of 127.0.0.1
            "64:ff9b::a9fe:a9fe", // NAT64 of 169.254.169.254
            "64:ff9b:1::808:808", // NAT64 local-use
            "2002:7f00:0001::1",  // 6to4 of 127.0.0.1
            "2002:0a00:0001::1",  // 6to4 of 10.0.0.1
            "2002:a9fe:a9fe::1",  // 6to4 of 169.254.169.254
            "2001::1",            // Teredo
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",   // benchmarking
            "2001:db8::1", // documentation
            "3fff::1",     // documentation (RFC 9637)
            "100::1",      // discard-only
            "5f00::1",     // SRv6 SIDs
            "fc00::1",
            "fd12:3456:789a::1",
            "fe80::1",
            "febf::1",
            "fec0::1", // site-local (deprecated)
            "ff02::1",
            "ff0e::1",
        ] {
            assert!(!allowed(ip, false), "{ip} should be refused");
        }
    }

    #[test]
    fn dev_loopback_opens_loopback_only() {
        for ip in ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1"] {
            assert!(!allowed(ip, false), "{ip} refused without dev_loopback");
            assert!(allowed(ip, true), "{ip} allowed with dev_loopback");
        }
        for ip in [
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "10.0.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "fe80::1",
            "fc00::1",
        ] {
            assert!(!allowed(ip, true), "{ip} refused even with dev_loopback");
        }
    }

    #[test]
    fn embedded_v4_reads_the_right_bytes() {
        let ip: Ipv6Addr = "2002:0102:0304::1".parse().unwrap();
        assert_eq!(embedded_v4(ip, 2), Ipv4Addr::new(1, 2, 3, 4));
        let ip: Ipv6Addr = "64:ff9b::0506:0708".parse().unwrap();
        assert_eq!(embedded_v4(ip, 12), Ipv4Addr::new(5, 6, 7, 8));
    }
}
