//! The host's own addresses, as candidate endpoints for peers.

use std::net::{IpAddr, SocketAddr};

/// Addresses another node could reach: not loopback, link-local,
/// multicast, or inside the overlay's own ranges (100.64.0.0/10, fd00::/8
/// carry VIPs, never underlay traffic).
pub fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(a) => {
            let s = a.segments()[0];
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s & 0xffc0) == 0xfe80
                || (s & 0xff00) == 0xfd00)
        }
    }
}

/// The host's usable interface addresses with `port`, IPv6 first, sorted
/// so that the same set always compares equal.
#[cfg(unix)]
pub fn local_endpoints(port: u16) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs fills a linked list we only read and then free
    // with freeifaddrs; every pointer is checked for null before use and
    // sockaddr is cast according to its sa_family.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_flags & (libc::IFF_UP as u32) == 0 {
                continue;
            }
            let ip = match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                }
                _ => continue,
            };
            if usable(ip) {
                out.push(SocketAddr::new(ip, port));
            }
        }
        libc::freeifaddrs(head);
    }
    out.sort_by_key(|a| (a.is_ipv4(), *a));
    out.dedup();
    out
}

/// The host's usable interface addresses with `port`, IPv6 first, sorted.
#[cfg(windows)]
pub fn local_endpoints(port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = cyphonic_platform::ifaddrs::addresses()
        .into_iter()
        .filter(|ip| usable(*ip))
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    out.sort_by_key(|a| (a.is_ipv4(), *a));
    out.dedup();
    out
}

/// The host's default routes (interface and gateway), IPv4 and IPv6, as
/// `/proc/net/route` and `/proc/net/ipv6_route` list them; sorted, so the
/// same set compares equal.
#[cfg(target_os = "linux")]
pub fn default_routes() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Iface Destination Gateway Flags ... Mask ...
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
                out.push(format!("{} via {}", f[0], f[2]));
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // dest dest_len src src_len next_hop metric refcnt use flags iface
            if f.len() > 9 && f[0].chars().all(|c| c == '0') && f[1] == "00" && f[9] != "lo" {
                out.push(format!("{} via6 {}", f[9], f[4]));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(not(target_os = "linux"))]
pub fn default_routes() -> Vec<String> {
    Vec::new()
}

/// The gateway of the IPv4 default route, if there is one.
#[cfg(target_os = "linux")]
pub fn default_gateway_v4() -> Option<std::net::Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags ... Mask: the gateway is the
        // address's bytes read as a native-endian word, in hex.
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000")
            .then(|| u32::from_str_radix(f[2], 16).ok())
            .flatten()
            .filter(|g| *g != 0)
            .map(|g| std::net::Ipv4Addr::from(g.to_ne_bytes()))
    })
}

#[cfg(not(target_os = "linux"))]
pub fn default_gateway_v4() -> Option<std::net::Ipv4Addr> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_and_local_scopes_are_not_endpoints() {
        for bad in [
            "127.0.0.1",
            "100.64.0.2",
            "100.127.255.1",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "fd7a:6379:7068::2",
            "ff02::1",
        ] {
            assert!(!usable(bad.parse().unwrap()), "{bad}");
        }
        for good in ["192.0.2.1", "198.51.100.7", "100.128.0.1", "2001:db8::1"] {
            assert!(usable(good.parse().unwrap()), "{good}");
        }
    }
}
