//! Raw frames on a real veth pair in a throwaway namespace. Needs root;
//! skipped otherwise.
#![cfg(target_os = "linux")]

mod support;

use std::time::{Duration, Instant};

use cyphonic_platform::packet::PacketSocket;
use support::{is_root, Netns};

#[test]
fn frames_cross_a_veth_and_our_own_are_not_read_back() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    let ns = Netns::new("pkt");
    ns.sh("ip link add cypa type veth peer name cypb");
    ns.sh("ip link set cypa address 02:00:5e:00:00:0a up");
    ns.sh("ip link set cypb address 02:00:5e:00:00:0b up");
    // No IP stack chatter on these links (no IPv6 autoconfiguration).
    ns.sh("sysctl -qw net.ipv6.conf.cypa.disable_ipv6=1 net.ipv6.conf.cypb.disable_ipv6=1");
    ns.run(|| {
        let a = PacketSocket::open("cypa").expect("open cypa");
        let b = PacketSocket::open("cypb").expect("open cypb");
        assert_eq!(a.mac(), [2, 0, 0x5e, 0, 0, 0x0a]);
        assert!(PacketSocket::open("cyp-none").is_err());
        // A frame of an unused ethertype (local experimental 0x88b5).
        let mut frame = Vec::new();
        frame.extend_from_slice(&b.mac());
        frame.extend_from_slice(&a.mac());
        frame.extend_from_slice(&[0x88, 0xb5]);
        frame.extend_from_slice(b"cyphonic adapter frame test, padded to 60 bytes....");
        let mut buf = [0u8; 2048];
        // The veth may drop frames for a moment after coming up (see
        // shared/LAB-NOTES.md): send until one arrives, with a deadline.
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = loop {
            a.send(&frame).expect("send");
            if let Some(f) = b.recv(&mut buf, Duration::from_millis(100)).expect("recv") {
                if buf[12..14] == [0x88, 0xb5] {
                    assert!(
                        !f.checksum_not_ready,
                        "a raw frame has no transport checksum to fill"
                    );
                    break f.len;
                }
            }
            assert!(Instant::now() < deadline, "no frame crossed the veth");
        };
        assert_eq!(&buf[..got], &frame[..]);
        // What a sent is never read back on a.
        while let Some(f) = a.recv(&mut buf, Duration::from_millis(200)).expect("recv") {
            assert!(buf[..f.len] != frame[..], "own frame read back");
        }
    });
}
