//! The host's interface addresses, where the standard library has no call
//! for them (Windows: `GetAdaptersAddresses`). On Unix the node reads them
//! with getifaddrs(3).

/// The unicast addresses of the interfaces that are up.
#[cfg(windows)]
pub fn addresses() -> Vec<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use windows_sys::Win32::Foundation::{ERROR_BUFFER_OVERFLOW, NO_ERROR};
    use windows_sys::Win32::NetworkManagement::IpHelper::{
        GetAdaptersAddresses, GAA_FLAG_SKIP_ANYCAST, GAA_FLAG_SKIP_DNS_SERVER,
        GAA_FLAG_SKIP_MULTICAST, IP_ADAPTER_ADDRESSES_LH,
    };
    use windows_sys::Win32::NetworkManagement::Ndis::IfOperStatusUp;
    use windows_sys::Win32::Networking::WinSock::{
        AF_INET, AF_INET6, AF_UNSPEC, SOCKADDR_IN, SOCKADDR_IN6,
    };

    let flags = GAA_FLAG_SKIP_ANYCAST | GAA_FLAG_SKIP_MULTICAST | GAA_FLAG_SKIP_DNS_SERVER;
    let mut len: u32 = 16 * 1024;
    let mut buf: Vec<u64> = Vec::new();
    for _ in 0..4 {
        // u64 words keep the buffer aligned for the structures.
        buf = vec![0u64; (len as usize).div_ceil(8)];
        // SAFETY: the buffer is `len` bytes, aligned, valid for the call.
        let status = unsafe {
            GetAdaptersAddresses(
                u32::from(AF_UNSPEC),
                flags,
                std::ptr::null(),
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        match status {
            NO_ERROR => break,
            ERROR_BUFFER_OVERFLOW => continue,
            _ => return Vec::new(),
        }
    }
    let mut out = Vec::new();
    // SAFETY: the list was filled by the call above; every pointer is
    // checked for null and sockaddrs are read by their family.
    unsafe {
        let mut adapter = buf.as_ptr() as *const IP_ADAPTER_ADDRESSES_LH;
        while !adapter.is_null() {
            let a = &*adapter;
            adapter = a.Next;
            if a.OperStatus != IfOperStatusUp {
                continue;
            }
            let mut unicast = a.FirstUnicastAddress;
            while !unicast.is_null() {
                let u = &*unicast;
                unicast = u.Next;
                let sa = u.Address.lpSockaddr;
                if sa.is_null() {
                    continue;
                }
                match (*sa).sa_family {
                    AF_INET => {
                        let sin = &*(sa as *const SOCKADDR_IN);
                        out.push(IpAddr::V4(Ipv4Addr::from(
                            sin.sin_addr.S_un.S_addr.to_ne_bytes(),
                        )));
                    }
                    AF_INET6 => {
                        let sin6 = &*(sa as *const SOCKADDR_IN6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.u.Byte)));
                    }
                    _ => {}
                }
            }
        }
    }
    out
}
