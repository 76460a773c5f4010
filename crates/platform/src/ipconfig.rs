//! Putting a node's VIPs on its interface where the OS does not do it with
//! the device (Windows: the IP Helper API on the wintun adapter).
//!
//! [`plan`] says which rows a [`TunConfig`] needs; [`apply`] makes them
//! through an [`IpHelper`]: the IP Helper API on Windows, a recorder in
//! tests. An address with its prefix length is also the on-link route of
//! the overlay's prefix, so no route rows are needed.

use std::io;
use std::net::IpAddr;

use crate::tun::TunConfig;

/// One change to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// The interface's MTU for one IP version.
    Mtu { v6: bool, mtu: u16 },
    /// An address with the prefix length of its on-link route.
    Address { addr: IpAddr, prefix: u8 },
}

/// The calls that make [`Row`]s, on the interface named by its LUID.
pub trait IpHelper {
    fn set_mtu(&mut self, luid: u64, v6: bool, mtu: u16) -> io::Result<()>;
    /// Adds the address; one already there is not an error (a restart
    /// after a crash finds it).
    fn add_address(&mut self, luid: u64, addr: IpAddr, prefix: u8) -> io::Result<()>;
}

/// The rows `cfg` needs, in the order they are made: the MTU first, so no
/// packet leaves at the wrong size, then the addresses.
pub fn plan(cfg: &TunConfig) -> Vec<Row> {
    vec![
        Row::Mtu {
            v6: false,
            mtu: cfg.mtu,
        },
        Row::Mtu {
            v6: true,
            mtu: cfg.mtu,
        },
        Row::Address {
            addr: IpAddr::V4(cfg.vip4),
            prefix: cfg.prefix4,
        },
        Row::Address {
            addr: IpAddr::V6(cfg.vip6),
            prefix: cfg.prefix6,
        },
    ]
}

/// Makes every row, stopping at the first that fails; the error says
/// which.
pub fn apply(helper: &mut impl IpHelper, luid: u64, rows: &[Row]) -> io::Result<()> {
    for row in rows {
        let done = match *row {
            Row::Mtu { v6, mtu } => helper.set_mtu(luid, v6, mtu),
            Row::Address { addr, prefix } => helper.add_address(luid, addr, prefix),
        };
        done.map_err(|e| io::Error::new(e.kind(), format!("{row:?}: {e}")))?;
    }
    Ok(())
}

#[cfg(windows)]
pub use windows::WinIpHelper;

#[cfg(windows)]
mod windows {
    use std::io;
    use std::net::IpAddr;

    use windows_sys::Win32::Foundation::{ERROR_OBJECT_ALREADY_EXISTS, NO_ERROR};
    use windows_sys::Win32::NetworkManagement::IpHelper::{
        CreateUnicastIpAddressEntry, GetIpInterfaceEntry, InitializeIpInterfaceEntry,
        InitializeUnicastIpAddressEntry, SetIpInterfaceEntry, MIB_IPINTERFACE_ROW,
        MIB_UNICASTIPADDRESS_ROW,
    };
    use windows_sys::Win32::NetworkManagement::Ndis::NET_LUID_LH;
    use windows_sys::Win32::Networking::WinSock::{
        IpDadStatePreferred, AF_INET, AF_INET6, SOCKADDR_IN, SOCKADDR_IN6,
    };

    /// The IP Helper API.
    pub struct WinIpHelper;

    fn check(status: u32) -> io::Result<()> {
        if status == NO_ERROR {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(status as i32))
        }
    }

    impl super::IpHelper for WinIpHelper {
        fn set_mtu(&mut self, luid: u64, v6: bool, mtu: u16) -> io::Result<()> {
            // SAFETY: a zeroed row is valid for Initialize*, which fills
            // the defaults; the pointers are valid for each call.
            unsafe {
                let mut row: MIB_IPINTERFACE_ROW = std::mem::zeroed();
                InitializeIpInterfaceEntry(&mut row);
                row.InterfaceLuid = NET_LUID_LH { Value: luid };
                row.Family = if v6 { AF_INET6 } else { AF_INET };
                check(GetIpInterfaceEntry(&mut row))?;
                row.NlMtu = u32::from(mtu);
                // SitePrefixLength must be 0 for IPv4 on set.
                if !v6 {
                    row.SitePrefixLength = 0;
                }
                check(SetIpInterfaceEntry(&mut row))
            }
        }

        fn add_address(&mut self, luid: u64, addr: IpAddr, prefix: u8) -> io::Result<()> {
            // SAFETY: as above; the address union is written for the
            // family it is read as.
            unsafe {
                let mut row: MIB_UNICASTIPADDRESS_ROW = std::mem::zeroed();
                InitializeUnicastIpAddressEntry(&mut row);
                row.InterfaceLuid = NET_LUID_LH { Value: luid };
                match addr {
                    IpAddr::V4(v4) => {
                        let mut sin: SOCKADDR_IN = std::mem::zeroed();
                        sin.sin_family = AF_INET;
                        sin.sin_addr.S_un.S_addr = u32::from_ne_bytes(v4.octets());
                        row.Address.Ipv4 = sin;
                    }
                    IpAddr::V6(v6) => {
                        let mut sin6: SOCKADDR_IN6 = std::mem::zeroed();
                        sin6.sin6_family = AF_INET6;
                        sin6.sin6_addr.u.Byte = v6.octets();
                        row.Address.Ipv6 = sin6;
                    }
                }
                row.OnLinkPrefixLength = prefix;
                // Nothing else is on this link: no duplicate detection.
                row.DadState = IpDadStatePreferred;
                match CreateUnicastIpAddressEntry(&row) {
                    ERROR_OBJECT_ALREADY_EXISTS => Ok(()),
                    status => check(status),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        calls: Vec<(u64, Row)>,
        fail_on: Option<Row>,
    }

    impl IpHelper for Recorder {
        fn set_mtu(&mut self, luid: u64, v6: bool, mtu: u16) -> io::Result<()> {
            self.record(luid, Row::Mtu { v6, mtu })
        }
        fn add_address(&mut self, luid: u64, addr: IpAddr, prefix: u8) -> io::Result<()> {
            self.record(luid, Row::Address { addr, prefix })
        }
    }

    impl Recorder {
        fn record(&mut self, luid: u64, row: Row) -> io::Result<()> {
            if self.fail_on == Some(row) {
                return Err(io::Error::from(io::ErrorKind::PermissionDenied));
            }
            self.calls.push((luid, row));
            Ok(())
        }
    }

    fn cfg() -> TunConfig {
        TunConfig {
            name: "cyphonic".into(),
            mtu: 1280,
            vip4: "100.64.0.7".parse().unwrap(),
            prefix4: 10,
            vip6: "fd7a:6379:7068::7".parse().unwrap(),
            prefix6: 48,
            offload: false,
        }
    }

    #[test]
    fn the_vips_go_on_the_adapter_with_the_overlay_prefixes_after_the_mtu() {
        let mut rec = Recorder::default();
        apply(&mut rec, 42, &plan(&cfg())).unwrap();
        assert_eq!(
            rec.calls,
            vec![
                (
                    42,
                    Row::Mtu {
                        v6: false,
                        mtu: 1280
                    }
                ),
                (
                    42,
                    Row::Mtu {
                        v6: true,
                        mtu: 1280
                    }
                ),
                (
                    42,
                    Row::Address {
                        addr: "100.64.0.7".parse().unwrap(),
                        prefix: 10
                    }
                ),
                (
                    42,
                    Row::Address {
                        addr: "fd7a:6379:7068::7".parse().unwrap(),
                        prefix: 48
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_failed_row_stops_the_rest_and_is_named() {
        let rows = plan(&cfg());
        let mut rec = Recorder {
            fail_on: Some(rows[2]),
            ..Default::default()
        };
        let err = apply(&mut rec, 1, &rows).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("100.64.0.7"), "{err}");
        assert_eq!(rec.calls.len(), 2, "the IPv6 address was not tried");
    }
}
