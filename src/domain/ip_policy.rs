//! The SSRF policy: which addresses a webhook may never reach. Used at
//! registration and by the sender's resolver on the addresses it connects to.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Loopback, private, link-local (cloud metadata included), unique-local,
/// shared (CGNAT), benchmarking, IETF-reserved, multicast, broadcast and
/// unspecified addresses, and the IPv6 forms that embed an IPv4 address a
/// gateway may turn into any other (IPv4-compatible, 6to4, Teredo, local-use
/// NAT64).
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_forbidden(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_forbidden(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link local fe80::/10
                || (first & 0xffc0) == 0xfec0 // deprecated site local fec0::/10
                || first == 0x2002 // 6to4 2002::/16
                || (first == 0x2001 && v6.segments()[1] == 0) // Teredo 2001::/32
                || v6.segments()[..3] == [0x64, 0xff9b, 1] // local-use NAT64 64:ff9b:1::/48
                || v6.segments()[..6] == [0; 6] // IPv4-compatible ::a.b.c.d (deprecated)
                || is_nat64_of_forbidden(v6)
        }
    }
}

fn v4_forbidden(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_unspecified()
        || a == 0 // "this network" 0.0.0.0/8
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64.0.0/10
        || (a == 198 && (18..20).contains(&b)) // benchmarking 198.18.0.0/15
        || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments 192.0.0.0/24
        || a >= 240 // reserved 240.0.0.0/4
}

/// 64:ff9b::/96 embeds an IPv4 address; judge the embedded one.
fn is_nat64_of_forbidden(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return v4_forbidden(Ipv4Addr::new(a, b, c, d));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
            "::8.8.8.8",
            "64:ff9b:1::a00:1",
            "64:ff9b:1::808:808",
            "2002:7f00:1::1",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "198.18.0.1",
            "198.19.255.254",
            "192.0.0.8",
        ] {
            assert!(
                is_forbidden(ip.parse().unwrap()),
                "{ip} should be forbidden"
            );
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
            "2001:db9::1",
            "2001:1::1",
            "198.20.0.1",
            "198.17.255.255",
            "192.0.1.1",
            "192.0.2.1",
        ] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip} should be allowed");
        }
    }
}
