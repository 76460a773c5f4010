//! Raw Ethernet frames on one interface (`AF_PACKET`, packet(7)): how the
//! adapter sees and answers everything on its LAN (`docs/adapter.md`).
//! Frames this socket sends are not read back (`PACKET_IGNORE_OUTGOING`);
//! each frame read says whether its transport checksum is still to be
//! filled in (`PACKET_AUXDATA`, `TP_STATUS_CSUMNOTREADY`), as it is for
//! frames from a local stack or a virtual NIC with checksum offload.
//!
//! Frames may also be larger than the link's MTU: a NIC's GRO, or a veth
//! peer's TSO, hands the socket one TCP or UDP super-packet for many
//! wire frames. The socket reads each frame with its virtio-net header
//! (`PACKET_VNET_HDR`), and [`split_gso`] cuts such a packet into the
//! segments the wire would have carried, every checksum filled in.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A bound `AF_PACKET` socket that sees every frame of one interface.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
}

const ETH_P_ALL: u16 = 0x0003;
/// `tpacket_auxdata.tp_status`: the checksum is not computed yet.
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;

/// One frame read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub len: usize,
    /// The kernel has not filled in the transport checksum yet: there is
    /// none to verify.
    pub checksum_not_ready: bool,
    /// The frame is a segmentation-offload super-packet: [`split_gso`].
    pub gso: Option<Gso>,
}

/// How a super-packet is cut: its virtio-net header, with offsets counted
/// from the start of the IP packet (the socket's count from the Ethernet
/// header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
}

/// The virtio-net header's length (`struct virtio_net_hdr`).
const VNET_HDR_LEN: usize = 10;
const VNET_HDR_F_NEEDS_CSUM: u8 = 1;
const ETHERNET_HEADER_LEN: u16 = 14;

/// Turns on the `SOL_PACKET` option `option`.
fn enable(fd: &OwnedFd, option: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the option value is a valid c_int for the call's duration.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            option,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Cuts the IP packet `packet` (a super-packet described by `gso`) into
/// its segments, each a whole IP packet with its checksums, appended to
/// `out`. Fails, leaving `out` as it was, if the header does not describe
/// the packet.
pub fn split_gso(packet: &mut [u8], gso: Gso, out: &mut Vec<Vec<u8>>) -> io::Result<()> {
    let is_v6 = packet.first().is_some_and(|b| b >> 4 == 6);
    let hdr = tun_rs::VirtioNetHdr {
        flags: VNET_HDR_F_NEEDS_CSUM,
        gso_type: gso.gso_type,
        hdr_len: gso.hdr_len,
        gso_size: gso.gso_size,
        csum_start: gso.csum_start,
        csum_offset: gso.csum_offset,
    };
    let payload = packet.len().saturating_sub(usize::from(gso.hdr_len));
    let size = usize::from(gso.gso_size.max(1));
    let segments = payload.div_ceil(size).max(1);
    let seg_len = usize::from(gso.hdr_len) + size;
    let mut bufs: Vec<Vec<u8>> = (0..segments).map(|_| vec![0u8; seg_len]).collect();
    let mut sizes = vec![0usize; segments];
    let n = tun_rs::gso_split(packet, hdr, &mut bufs, &mut sizes, 0, is_v6)?;
    for (mut b, len) in bufs.into_iter().zip(sizes).take(n) {
        b.truncate(len);
        out.push(b);
    }
    Ok(())
}

impl PacketSocket {
    /// Opens the socket on `ifname` (needs `CAP_NET_RAW`).
    pub fn open(ifname: &str) -> io::Result<PacketSocket> {
        let name = CString::new(ifname)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
        // SAFETY: a valid C string; if_nametoindex has no other preconditions.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface named {ifname}"),
            ));
        }
        // SAFETY: plain socket(2) call; the result is checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Our own frames are not read back; each frame read comes with its
        // virtio-net header and its checksum status.
        for option in [
            libc::PACKET_IGNORE_OUTGOING,
            libc::PACKET_VNET_HDR,
            libc::PACKET_AUXDATA,
        ] {
            enable(&fd, option)?;
        }
        let addr = sockaddr_ll(ifindex, None);
        // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mac = hardware_address(&fd, ifname)?;
        Ok(PacketSocket { fd, ifindex, mac })
    }

    /// The interface's own MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sends one whole Ethernet frame (header included) as it is.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let dst = frame.get(..6).map(|d| {
            let mut m = [0u8; 6];
            m.copy_from_slice(d);
            m
        });
        let mut addr = sockaddr_ll(self.ifindex, dst);
        // A whole frame: an empty virtio-net header (no offload) first.
        let mut vnet = [0u8; VNET_HDR_LEN];
        let mut iov = [
            libc::iovec {
                iov_base: vnet.as_mut_ptr().cast(),
                iov_len: VNET_HDR_LEN,
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: msghdr is plain old data; zeroed is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        // SAFETY: `msg` points at `addr` and `iov`, whose buffers (`vnet`,
        // `frame`) are valid for reads of their lengths during the call;
        // the kernel does not write through them.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next frame into `buf`, waiting at most `timeout`: `Ok(None)`
    /// when none came. A frame longer than `buf` is cut to it.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<Frame>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            };
        }
        if rc == 0 {
            return Ok(None);
        }
        let mut vnet = [0u8; VNET_HDR_LEN];
        let mut iov = [
            libc::iovec {
                iov_base: vnet.as_mut_ptr().cast(),
                iov_len: VNET_HDR_LEN,
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
        ];
        // Room for one tpacket_auxdata control message, aligned.
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain old data; zeroed is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: `msg` points at `iov` (valid for `buf`) and `control`,
        // both alive for the call.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(None)
            } else {
                Err(e)
            };
        }
        let mut checksum_not_ready = false;
        // SAFETY: the CMSG macros walk the control buffer recvmsg filled,
        // within `msg_controllen`.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_PACKET
                    && (*cmsg).cmsg_type == libc::PACKET_AUXDATA
                {
                    let aux: libc::tpacket_auxdata =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    checksum_not_ready = aux.tp_status & TP_STATUS_CSUMNOTREADY != 0;
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        let len = (n as usize).saturating_sub(VNET_HDR_LEN);
        let u16_at = |at: usize| u16::from_le_bytes([vnet[at], vnet[at + 1]]);
        let (flags, gso_type) = (vnet[0], vnet[1]);
        // The socket counts offsets from the Ethernet header.
        let gso = (gso_type != 0).then(|| Gso {
            gso_type,
            hdr_len: u16_at(2).saturating_sub(ETHERNET_HEADER_LEN),
            gso_size: u16_at(4),
            csum_start: u16_at(6).saturating_sub(ETHERNET_HEADER_LEN),
            csum_offset: u16_at(8),
        });
        Ok(Some(Frame {
            len,
            checksum_not_ready: checksum_not_ready || flags & VNET_HDR_F_NEEDS_CSUM != 0,
            gso,
        }))
    }
}

fn sockaddr_ll(ifindex: i32, dst: Option<[u8; 6]>) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; zeroed is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ALL.to_be();
    addr.sll_ifindex = ifindex;
    if let Some(d) = dst {
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&d);
    }
    addr
}

/// The interface's MAC address (`SIOCGIFHWADDR`).
fn hardware_address(fd: &OwnedFd, ifname: &str) -> io::Result<[u8; 6]> {
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {ifname} is too long"),
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware-address member.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}
