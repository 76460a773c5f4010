//! The TUN device against the real kernel, each test in its own network
//! namespace. Needs root; skipped otherwise.
#![cfg(target_os = "linux")]

mod support;

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cyphonic_platform::tun::{Tun, TunConfig, IDEAL_BATCH_SIZE, RECV_SCRATCH_LEN};
use support::{icmp_echo_request, is_root, udp4, Netns};

const TUN: &str = "cyt0";
const VIP4: [u8; 4] = [100, 64, 0, 1];
const PEER4: [u8; 4] = [100, 64, 0, 2];
/// Headroom the data path keeps in front of each packet.
const OFFSET: usize = 16;

fn config(offload: bool) -> TunConfig {
    TunConfig {
        name: TUN.into(),
        mtu: 1420,
        vip4: Ipv4Addr::from(VIP4),
        prefix4: 10,
        vip6: "fd00:cafe::1".parse().unwrap(),
        prefix6: 64,
        offload,
    }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, TUN devices)");
            return;
        }
    };
}

/// Shuts the device down after `after` unless disarmed, so a test waiting
/// for a packet that never comes fails instead of hanging.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn arm(tun: &Arc<Tun>, after: Duration) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let (tun, flag) = (tun.clone(), done.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < after {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tun.shutdown();
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Reads single packets until one matches `want`.
fn recv_until(tun: &Arc<Tun>, mut want: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
    let _dog = Watchdog::arm(tun, Duration::from_secs(5));
    let mut buf = vec![0u8; 65536];
    loop {
        let n = tun.recv(&mut buf).expect("recv before the deadline");
        if want(&buf[..n]) {
            return buf[..n].to_vec();
        }
    }
}

fn is_icmp4(p: &[u8], src: [u8; 4], dst: [u8; 4], icmp_type: u8) -> bool {
    p.len() >= 28
        && p[0] >> 4 == 4
        && p[9] == 1
        && p[12..16] == src
        && p[16..20] == dst
        && p[20] == icmp_type
}

fn rx_packets(ns: &Netns) -> u64 {
    ns.sh(&format!("cat /sys/class/net/{TUN}/statistics/rx_packets"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn create_assigns_both_vips_and_on_link_routes() {
    require_root!();
    let ns = Netns::new("addr");
    let tun = ns.run(|| Tun::create(&config(false))).expect("create TUN");
    assert_eq!(tun.name(), TUN);
    assert_eq!(tun.mtu(), 1420);
    let addrs = ns.sh(&format!("ip addr show dev {TUN}"));
    assert!(addrs.contains("inet 100.64.0.1/10"), "{addrs}");
    assert!(addrs.contains("inet6 fd00:cafe::1/64"), "{addrs}");
    assert!(
        addrs.contains("mtu 1420") && addrs.contains(",UP"),
        "{addrs}"
    );
    let routes = ns.sh("ip route; ip -6 route");
    assert!(
        routes.contains(&format!("100.64.0.0/10 dev {TUN}")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("fd00:cafe::/64 dev {TUN}")),
        "{routes}"
    );
    drop(tun);
    let gone = ns.sh_output(&format!("ip link show {TUN}"));
    assert!(!gone.status.success(), "device outlives the Tun");
}

#[test]
fn kernel_ping_arrives_in_recv() {
    require_root!();
    let ns = Netns::new("ping");
    let tun = Arc::new(ns.run(|| Tun::create(&config(false))).expect("create TUN"));
    // No one answers; the request is what we want to see.
    let name = ns.name.clone();
    let pinger = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args(["netns", "exec", &name, "ping", "-c1", "-W1", "100.64.0.2"])
            .output()
    });
    let p = recv_until(&tun, |p| is_icmp4(p, VIP4, PEER4, 8));
    assert_eq!(&p[16..20], &PEER4);
    pinger.join().unwrap().unwrap();

    let name = ns.name.clone();
    let pinger = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                "ping",
                "-6",
                "-c1",
                "-W1",
                "fd00:cafe::2",
            ])
            .output()
    });
    let want: std::net::Ipv6Addr = "fd00:cafe::2".parse().unwrap();
    let p = recv_until(&tun, |p| {
        p.len() >= 48 && p[0] >> 4 == 6 && p[6] == 58 && p[24..40] == want.octets() && p[40] == 128
    });
    assert_eq!(p[40], 128, "ICMPv6 echo request");
    pinger.join().unwrap().unwrap();
}

#[test]
fn written_packet_is_counted_and_answered_by_the_kernel() {
    require_root!();
    let ns = Netns::new("write");
    let tun = Arc::new(ns.run(|| Tun::create(&config(false))).expect("create TUN"));
    let before = rx_packets(&ns);
    let request = icmp_echo_request(PEER4, VIP4, 0x4242, 1);
    assert_eq!(tun.send(&request).unwrap(), request.len());
    // The kernel owns VIP4, so it replies through the device.
    let reply = recv_until(&tun, |p| is_icmp4(p, VIP4, PEER4, 0));
    assert_eq!(&reply[24..26], &0x4242u16.to_be_bytes());
    assert_eq!(rx_packets(&ns), before + 1);
}

#[test]
fn shutdown_wakes_a_blocked_reader() {
    require_root!();
    let ns = Netns::new("shut");
    let tun = Arc::new(ns.run(|| Tun::create(&config(false))).expect("create TUN"));
    let reader = {
        let tun = tun.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 2048];
            loop {
                // Router solicitations and the like may arrive first.
                if let Err(e) = tun.recv(&mut buf) {
                    return e;
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    tun.shutdown();
    let err = reader.join().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
    assert!(start.elapsed() < Duration::from_secs(1));
    let err = tun.send(&icmp_echo_request(PEER4, VIP4, 1, 1)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
}

#[test]
fn batch_io_without_offload_moves_one_packet_per_read_and_every_write() {
    require_root!();
    let ns = Netns::new("batch");
    let tun = Arc::new(ns.run(|| Tun::create(&config(false))).expect("create TUN"));
    let before = rx_packets(&ns);
    let mut bufs: Vec<Vec<u8>> = (1..=3)
        .map(|seq| {
            let mut b = vec![0u8; OFFSET];
            b.extend(icmp_echo_request(PEER4, VIP4, 7, seq));
            b
        })
        .collect();
    tun.send_batch(&mut bufs, OFFSET).unwrap();
    assert_eq!(rx_packets(&ns), before + 3);

    assert_eq!(echo_replies(&tun, 3, Some(1)), [1, 2, 3]);
}

/// The sequence numbers of the first `count` echo replies to PEER4 read
/// with `recv_batch` (`per_read`: how many packets each read must give).
fn echo_replies(tun: &Arc<Tun>, count: usize, per_read: Option<usize>) -> Vec<u16> {
    let _dog = Watchdog::arm(tun, Duration::from_secs(5));
    let mut scratch = vec![0u8; RECV_SCRATCH_LEN];
    let mut bufs = vec![vec![0u8; OFFSET + 1500]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut replies = Vec::new();
    while replies.len() < count {
        let n = tun
            .recv_batch(&mut scratch, &mut bufs, &mut sizes, OFFSET)
            .unwrap();
        if let Some(want) = per_read {
            assert_eq!(n, want);
        }
        for i in 0..n {
            let p = &bufs[i][OFFSET..OFFSET + sizes[i]];
            if is_icmp4(p, VIP4, PEER4, 0) {
                replies.push(u16::from_be_bytes([p[26], p[27]]));
            }
        }
    }
    replies
}

#[test]
fn a_batch_of_one_reaches_the_kernel_with_and_without_offload() {
    require_root!();
    for offload in [false, true] {
        let ns = Netns::new(if offload { "one-off" } else { "one" });
        let tun = Arc::new(
            ns.run(|| Tun::create(&config(offload)))
                .expect("create TUN"),
        );
        assert_eq!(tun.offload(), offload);
        let before = rx_packets(&ns);
        for seq in 1..=2 {
            // Headroom of garbage: the device must not read it as a
            // virtio-net header.
            let mut b = vec![0xa5u8; OFFSET];
            b.extend(icmp_echo_request(PEER4, VIP4, 9, seq));
            tun.send_batch(std::slice::from_mut(&mut b), OFFSET)
                .unwrap();
        }
        assert_eq!(rx_packets(&ns), before + 2, "offload {offload}");
        assert_eq!(echo_replies(&tun, 2, None), [1, 2], "offload {offload}");
    }
}

/// `UDP_SEGMENT` from linux/udp.h.
const UDP_SEGMENT: libc::c_int = 103;

#[test]
fn offload_recv_batch_splits_a_udp_gso_segment() {
    require_root!();
    let ns = Netns::new("gso");
    let (tun, sock) = ns.run(|| {
        let tun = Tun::create(&config(true)).expect("create TUN with offload");
        let sock = UdpSocket::bind("100.64.0.1:7000").unwrap();
        (tun, sock)
    });
    assert!(tun.offload(), "kernel refused IFF_VNET_HDR offload");
    let tun = Arc::new(tun);
    let seg: libc::c_int = 1000;
    // SAFETY: valid socket fd, option value is a c_int as UDP_SEGMENT expects.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&seg as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let payload: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    sock.send_to(&payload, "100.64.0.2:9000").unwrap();

    let _dog = Watchdog::arm(&tun, Duration::from_secs(5));
    let mut scratch = vec![0u8; RECV_SCRATCH_LEN];
    let mut bufs = vec![vec![0u8; OFFSET + 1420]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut got = Vec::new();
    let mut reads_with_our_packets = 0;
    while got.len() < payload.len() {
        let n = tun
            .recv_batch(&mut scratch, &mut bufs, &mut sizes, OFFSET)
            .unwrap();
        let mut ours = false;
        for i in 0..n {
            let p = &bufs[i][OFFSET..OFFSET + sizes[i]];
            if p[0] >> 4 == 4 && p[9] == 17 && p[22..24] == 9000u16.to_be_bytes() {
                assert_eq!(p.len(), 20 + 8 + 1000, "one GSO piece per packet");
                got.extend_from_slice(&p[28..]);
                ours = true;
            }
        }
        reads_with_our_packets += usize::from(ours);
    }
    assert_eq!(got, payload);
    if tun.udp_offload() {
        // USO accepted: the kernel handed over one 4000-byte segment.
        assert_eq!(reads_with_our_packets, 1);
    }
}

#[test]
fn offload_send_batch_delivers_every_datagram_of_a_coalesced_flow() {
    require_root!();
    let ns = Netns::new("gro");
    let (tun, sock) = ns.run(|| {
        let tun = Tun::create(&config(true)).expect("create TUN with offload");
        let sock = UdpSocket::bind("100.64.0.1:6000").unwrap();
        (tun, sock)
    });
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let before = rx_packets(&ns);
    const N: usize = 8;
    let mut bufs: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            // Coalescing appends to the first packet's buffer, only within
            // its capacity.
            let mut b = Vec::with_capacity(2 * OFFSET + 65535);
            b.resize(OFFSET, 0);
            b.extend(udp4(PEER4, 5000, VIP4, 6000, &[i as u8; 1200]));
            b
        })
        .collect();
    tun.send_batch(&mut bufs, OFFSET).unwrap();
    let mut buf = [0u8; 2000];
    for i in 0..N {
        let (n, from) = sock.recv_from(&mut buf).expect("datagram delivered");
        assert_eq!(from, "100.64.0.2:5000".parse().unwrap());
        assert_eq!(&buf[..n], &[i as u8; 1200][..], "datagram {i}");
    }
    let writes = rx_packets(&ns) - before;
    eprintln!(
        "offload send_batch: {N} datagrams in {writes} device writes (udp offload: {})",
        tun.udp_offload()
    );
    if tun.udp_offload() {
        assert!(writes < N as u64, "no coalescing happened");
    }

    // A single send with offload still works (plain virtio-net header).
    let request = icmp_echo_request(PEER4, VIP4, 9, 9);
    assert_eq!(tun.send(&request).unwrap(), request.len());
    let tun = Arc::new(tun);
    recv_until(&tun, |p| is_icmp4(p, VIP4, PEER4, 0));
}

#[test]
fn offload_send_batch_coalesces_a_tcp_flow_the_kernel_accepts() {
    use std::io::Read;
    use support::{tcp4, TCP_ACK, TCP_PSH, TCP_SYN};
    require_root!();
    let ns = Netns::new("tcp");
    let (tun, listener) = ns.run(|| {
        let tun = Tun::create(&config(true)).expect("create TUN with offload");
        let listener = std::net::TcpListener::bind("100.64.0.1:7001").unwrap();
        (tun, listener)
    });
    let tun = Arc::new(tun);
    let (sport, isn) = (40000u16, 1000u32);
    // Handshake, playing the peer at PEER4.
    tun.send(&tcp4(PEER4, sport, VIP4, 7001, isn, 0, TCP_SYN, &[]))
        .unwrap();
    let syn_ack = recv_until(&tun, |p| {
        p.len() >= 40 && p[9] == 6 && p[22..24] == sport.to_be_bytes() && p[33] & 0x12 == 0x12
    });
    let server_isn = u32::from_be_bytes(syn_ack[24..28].try_into().unwrap());
    assert_eq!(
        u32::from_be_bytes(syn_ack[28..32].try_into().unwrap()),
        isn + 1
    );
    let ack = server_isn.wrapping_add(1);
    tun.send(&tcp4(PEER4, sport, VIP4, 7001, isn + 1, ack, TCP_ACK, &[]))
        .unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();

    const N: usize = 8;
    const SEG: usize = 1000;
    let payload: Vec<u8> = (0..N * SEG).map(|i| (i % 253) as u8).collect();
    let before = rx_packets(&ns);
    let mut bufs: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let mut b = Vec::with_capacity(2 * OFFSET + 65535);
            b.resize(OFFSET, 0);
            let flags = if i == N - 1 {
                TCP_ACK | TCP_PSH
            } else {
                TCP_ACK
            };
            let seq = isn + 1 + (i * SEG) as u32;
            b.extend(tcp4(
                PEER4,
                sport,
                VIP4,
                7001,
                seq,
                ack,
                flags,
                &payload[i * SEG..][..SEG],
            ));
            b
        })
        .collect();
    tun.send_batch(&mut bufs, OFFSET).unwrap();
    let mut got = vec![0u8; payload.len()];
    stream
        .read_exact(&mut got)
        .expect("the kernel accepted every byte");
    assert_eq!(got, payload);
    let writes = rx_packets(&ns) - before;
    eprintln!("offload send_batch: {N} TCP segments in {writes} device writes");
    assert!(writes < N as u64, "no coalescing happened");
}
