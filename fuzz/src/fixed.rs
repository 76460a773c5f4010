//! The fixed keys, identities and addresses the targets and the seed
//! generator share. Nothing here is secret: fuzzing needs the seeds to be
//! sealed with the keys the targets open them with.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use cyphonic_adapter::MacAddr;
use cyphonic_proto::handshake::{LocalIdentity, StaticKeypair};
use cyphonic_proto::{LocalIndex, RouteId, SessionId};
use ring::hmac;

/// Signaling session and its common key.
pub const SESSION: SessionId = SessionId(0x5e55_0000_0000_0042);
pub const SIGNAL_KEY: [u8; 32] = [0x42; 32];

/// The tunnel key (Noise psk) of the handshake target's route.
pub const TUNNEL_KEY: [u8; 32] = [0x5a; 32];
pub const ROUTE_ID: RouteId = RouteId(0x1122_3344_5566_7788);
/// Initiator (MN) and responder (CN) indexes.
pub const MN_INDEX: LocalIndex = LocalIndex(0xaaaa_0001);
pub const CN_INDEX: LocalIndex = LocalIndex(0xbbbb_0002);
/// Seeds of the ephemeral keys, so handshakes are deterministic.
pub const MN_EPHEMERAL_SEED: u64 = 1;
pub const CN_EPHEMERAL_SEED: u64 = 2;

/// Data-plane key and the receiver index its packets carry.
pub const DATA_KEY: [u8; 32] = [0xd4; 32];
pub const DATA_INDEX: LocalIndex = LocalIndex(0x0102_0304);

/// The relay secret NMS and TRS share.
pub const RELAY_SECRET: &[u8] = b"cyphonic fuzz relay secret";

/// The overlay domain the DNS target classifies against, and the VIPs it
/// answers with.
pub const DOMAIN: &str = "cyphonic.internal";
pub const VIP4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 3);

/// The adapter and its LAN, as the adapter crate's own tests set them up.
pub const ADAPTER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
pub const GW4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 1);
pub const GN_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0a, 0x01]);
pub const A4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
pub const A6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 0xa);
/// GN A's EUI-64 link-local address.
pub const A_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 0x0a01);
pub const GN_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0b, 0x01]);
pub const B4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 0xb);
pub const PEER4: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 20);
pub const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 1, 0x20);
pub const OVERLAY6: &str = "fd7a:6379:7068::/48";
/// A time for the DHCP servers (Unix seconds).
pub const NOW: u64 = 1_700_000_000;

/// A node identity with a fixed static key and a stand-in certificate
/// chain (the targets' verifiers accept any chain; X.509 is not what they
/// test).
pub fn identity(seed: u8) -> LocalIdentity {
    LocalIdentity {
        static_keys: StaticKeypair::from_private([seed; 32]),
        cert_chain_der: vec![
            format!("TEST-CERT node {seed}").into_bytes(),
            b"TEST-CA".to_vec(),
        ],
        binding_sig: [seed; 64],
    }
}

static MN: LazyLock<LocalIdentity> = LazyLock::new(|| identity(0x11));
static CN: LazyLock<LocalIdentity> = LazyLock::new(|| identity(0x22));

/// The initiator of the handshake target (made once: deriving the public
/// key is an X25519 multiplication).
pub fn mn() -> LocalIdentity {
    MN.clone()
}

/// The responder of the handshake target.
pub fn cn() -> LocalIdentity {
    CN.clone()
}

/// `HMAC-SHA256(tunnel_key, label)`: the subkeys `handshake.rs` derives
/// (privately) from a route's tunnel key. Mirrored here so the targets can
/// write Noise messages and macs of their own; if the crate changes them,
/// the seed generator's checks fail at once.
fn subkey(tunnel_key: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, tunnel_key), label);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The Noise psk of a route with `tunnel_key`.
pub fn handshake_psk(tunnel_key: &[u8; 32]) -> [u8; 32] {
    subkey(tunnel_key, b"cyphonic tunnel psk v1")
}

/// The trailing mac of handshake packets, `HMAC-SHA256(mac subkey,
/// data)[..16]`, recomputed by the targets so mutations reach past the mac
/// check.
pub fn handshake_mac(tunnel_key: &[u8; 32], data: &[u8]) -> [u8; 16] {
    let key = subkey(tunnel_key, b"cyphonic tunnel mac v1");
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), data);
    let mut mac = [0u8; 16];
    mac.copy_from_slice(&tag.as_ref()[..16]);
    mac
}

/// Replaces the last 16 bytes of `packet` by the mac of the rest.
pub fn fix_mac(key: &[u8; 32], packet: &mut [u8]) {
    if let Some(split) = packet.len().checked_sub(16) {
        let mac = handshake_mac(key, &packet[..split]);
        packet[split..].copy_from_slice(&mac);
    }
}
