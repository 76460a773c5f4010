//! Writes the seed corpora, `fuzz/corpus/<target>/<seed>`: real messages
//! made with the crates' own encoders (and, for the LAN, the frames the
//! adapter's tests carry, each checked by tcpdump), with the fixed keys of
//! `cyphonic_fuzz::fixed` so the targets can open what is sealed. Every
//! seed is run through its target's check before it is written.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds [-- CORPUS_DIR]
//! ```
//!
//! Files of other names in the corpus folders are left alone.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Instant;

use cyphonic_adapter::frame::{NaFlags, NdiscRepr};
use cyphonic_adapter::ra::RouterAdvertiser;
use cyphonic_fuzz::{fixed, TARGETS};
use cyphonic_proto::data::{SendKey, DATA_HEADER_LEN, DATA_OVERHEAD};
use cyphonic_proto::login::{self, LoginOk, Password, Request, Response};
use cyphonic_proto::punch::{self, Probe};
use cyphonic_proto::relay::{self, Bind};
use cyphonic_proto::signal::{
    CertStatus, DirectionErrorCode, Envelope, GeneralNodeInfo, GeneralNodes, Message, PeerInfo,
    RegistrationRequest, RegistrationResponse, RelayOffer, Role, RouteDirection, RoutePattern,
    SignalCipher,
};
use cyphonic_proto::{RelayId, RouteId, Transport};
use cyphonic_transport::framing;

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn main() {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let all: Vec<(&str, Seeds)> = vec![
        ("signal", signal()),
        ("handshake", handshake()),
        ("data", data()),
        ("relay", relay()),
        ("reflect", reflect()),
        ("trs-report", trs_report()),
        ("nms-link", nms_link()),
        ("transport", transport()),
        ("login", login()),
        ("dns", dns()),
        ("frame", frame()),
        ("dhcp4", dhcp4()),
        ("dhcp6", dhcp6()),
        ("ra", ra()),
    ];
    assert_eq!(all.len(), TARGETS.len(), "a target without seeds");
    for (target, seeds) in all {
        let check = TARGETS
            .iter()
            .find(|(name, _)| *name == target)
            .map(|(_, check)| *check)
            .expect("a target of that name");
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus folder");
        for (name, bytes) in &seeds {
            eprintln!("{target}/{name}: {} bytes", bytes.len());
            check(bytes);
            std::fs::write(dir.join(name), bytes).expect("write seed");
        }
    }
}

// ---------------------------------------------------------------------------
// cyphonic-proto

fn sample_direction(relayed: bool) -> RouteDirection {
    RouteDirection {
        route_id: RouteId(99),
        pattern: if relayed {
            RoutePattern::Relayed
        } else {
            RoutePattern::Direct
        },
        peer: PeerInfo {
            fqdn: "n2.cyphonic.internal".into(),
            vip4: Ipv4Addr::new(100, 64, 0, 3),
            vip6: "fd7a:6379:7068::3".parse().unwrap(),
            static_public: [9; 32],
            cert_serial: 0x1234_5678,
            cert_status: CertStatus::Good,
            endpoints: vec![
                "192.0.2.12:4501".parse().unwrap(),
                "[2001:db8::12]:4501".parse().unwrap(),
            ],
        },
        tunnel_key: [3; 32],
        initiate: !relayed,
        punch: relayed,
        spray: cyphonic_proto::signal::Spray::None,
        relay: relayed.then(|| RelayOffer {
            relay_id: RelayId(77),
            side: 1,
            expires: 1_900_000_000,
            key: [5; 32],
            servers: vec![
                "192.0.2.1:4503".parse().unwrap(),
                "[2001:db8::1]:4503".parse().unwrap(),
            ],
            quic_port: 443,
            tcp_port: 443,
        }),
        via: if relayed {
            Transport::Quic
        } else {
            Transport::Udp
        },
        filter: None,
    }
}

fn envelope(txid: u64, message: Message) -> Envelope {
    Envelope { txid, message }
}

fn signal() -> Seeds {
    let registration = Message::RegistrationRequest(RegistrationRequest {
        static_public: fixed::mn().static_keys.public,
        tunnel_port: 4501,
        local_addrs: vec![
            "192.0.2.11:4501".parse().unwrap(),
            "[2001:db8::11]:4501".parse().unwrap(),
        ],
        transport: Transport::Udp,
        quic_port: 443,
        mapped: None,
    });
    let registered = Message::RegistrationResponse(RegistrationResponse {
        fqdn: "n1.cyphonic.internal".into(),
        vip4: Ipv4Addr::new(100, 64, 0, 2),
        vip6: "fd7a:6379:7068::2".parse().unwrap(),
        observed: "203.0.113.7:31000".parse().unwrap(),
        keepalive_secs: 15,
        probe_port: 4504,
    });
    let general = Message::InformationResponse(GeneralNodes {
        version: 0xfeed,
        total: 2,
        offset: 0,
        nodes: vec![
            GeneralNodeInfo {
                mac: fixed::GN_A.0,
                fqdn: "printer.cyphonic.internal".into(),
                vip4: fixed::A4,
                vip6: fixed::A6,
            },
            GeneralNodeInfo {
                mac: fixed::GN_B.0,
                fqdn: "plc.cyphonic.internal".into(),
                vip4: fixed::B4,
                vip6: fixed::B6,
            },
        ],
    });
    let mut node = SignalCipher::new(fixed::SESSION, &fixed::SIGNAL_KEY, Role::Node, 1_000);
    let mut nms = SignalCipher::new(fixed::SESSION, &fixed::SIGNAL_KEY, Role::Nms, 5_000);
    vec![
        (
            "sealed-registration-request",
            node.seal(&envelope(1, registration.clone())),
        ),
        (
            "sealed-keepalive",
            node.seal(&envelope(2, Message::KeepAlive)),
        ),
        (
            "sealed-direction-request",
            node.seal(&envelope(
                3,
                Message::DirectionRequest {
                    target: "n2.cyphonic.internal".into(),
                },
            )),
        ),
        (
            "sealed-registration-response",
            nms.seal(&envelope(1, registered.clone())),
        ),
        (
            "sealed-route-direction-relayed",
            nms.seal(&envelope(
                3,
                Message::RouteDirectionToInitiator(sample_direction(true)),
            )),
        ),
        (
            "sealed-information-response",
            nms.seal(&envelope(4, general)),
        ),
        (
            "body-registration-request",
            envelope(1, registration).encode(),
        ),
        (
            "body-registration-response",
            envelope(1, registered).encode(),
        ),
        (
            "body-route-direction",
            envelope(
                7,
                Message::RouteDirectionToResponder(sample_direction(false)),
            )
            .encode(),
        ),
        (
            "body-direction-error",
            envelope(
                8,
                Message::DirectionError {
                    code: DirectionErrorCode::NotFound,
                    message: "no node n9.cyphonic.internal".into(),
                },
            )
            .encode(),
        ),
        (
            "body-route-direction-filtered",
            envelope(
                10,
                Message::RouteDirectionToResponder({
                    let mut d = sample_direction(false);
                    d.filter = Some(sample_filter());
                    d
                }),
            )
            .encode(),
        ),
        (
            "body-route-update",
            envelope(
                11,
                Message::RouteUpdate {
                    fqdn: "n1.cyphonic.internal".into(),
                    filter: sample_filter(),
                },
            )
            .encode(),
        ),
        (
            "body-keepalive-ack",
            envelope(
                9,
                Message::KeepAliveAck {
                    observed: "[2001:db8::11]:4501".parse().unwrap(),
                },
            )
            .encode(),
        ),
    ]
}

/// What a responder gets when the peer may open ICMP and tcp/5201 to it.
fn sample_filter() -> cyphonic_proto::policy::RouteFilter {
    cyphonic_proto::policy::RouteFilter {
        inbound: vec!["icmp".parse().unwrap(), "tcp/5201".parse().unwrap()],
        outbound: Vec::new(),
    }
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(bytes);
    v
}

/// `[count][len u16][der]...[sig 64]`, as a node sends its identity.
fn identity_payload(id: &cyphonic_proto::handshake::LocalIdentity) -> Vec<u8> {
    let mut out = vec![id.cert_chain_der.len() as u8];
    for cert in &id.cert_chain_der {
        out.extend_from_slice(&(cert.len() as u16).to_be_bytes());
        out.extend_from_slice(cert);
    }
    out.extend_from_slice(&id.binding_sig);
    out
}

fn handshake() -> Seeds {
    let (_, request) = cyphonic_fuzz::handshake::start_initiator();
    let (_, response) = cyphonic_fuzz::handshake::genuine_response();
    let mn_leaf = fixed::mn().cert_chain_der[0].clone();
    let cn_leaf = fixed::cn().cert_chain_der[0].clone();
    let mut leaves = (mn_leaf.len() as u16).to_be_bytes().to_vec();
    leaves.extend_from_slice(&mn_leaf);
    leaves.extend_from_slice(&cn_leaf);
    vec![
        ("request", with_mode(0, &request)),
        ("request-fix-mac", with_mode(4, &request)),
        ("response", with_mode(1, &response)),
        ("response-fix-mac", with_mode(5, &response)),
        (
            "identity-payload",
            with_mode(2, &identity_payload(&fixed::mn())),
        ),
        ("whole-handshake", with_mode(3, &leaves)),
    ]
}

/// GN A pings a peer VIP (IPv4 ICMP echo), from the adapter's fixtures.
const ICMP4_ECHO: &str = "4500 0024 5bd1 4000 40 01 156a 6440000a 64400114
    08 00 4b4a 00010001 637970686f6e6963";
/// A TCP SYN to a peer VIPv6.
const TCP6_SYN: &str = "60000000 0014 06 40 fd7a637970680000000000000000000a
    fd7a6379706800000000000000010020 c350001600000001000000005002faf04ea60000";

fn data_packets() -> Vec<Vec<u8>> {
    let send = SendKey::new(&fixed::DATA_KEY, fixed::DATA_INDEX);
    [hex(ICMP4_ECHO), Vec::new(), hex(TCP6_SYN)]
        .iter()
        .map(|inner| {
            let mut buf = vec![0u8; DATA_OVERHEAD + inner.len()];
            buf[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()].copy_from_slice(inner);
            let n = send.seal_in_place(&mut buf, inner.len()).unwrap();
            buf.truncate(n);
            buf
        })
        .collect()
}

fn data() -> Seeds {
    let packets = data_packets();
    vec![
        ("data-icmp4", packets[0].clone()),
        ("data-keepalive", packets[1].clone()),
        ("data-tcp6", packets[2].clone()),
        ("punch", punch::encode(fixed::ROUTE_ID).to_vec()),
        (
            "path-probe",
            Probe::Probe {
                nonce: 0x0123_4567_89ab_cdef,
            }
            .encode()
            .to_vec(),
        ),
        ("inner-icmp4", hex(ICMP4_ECHO)),
    ]
}

fn relay() -> Seeds {
    let expires = 1_900_000_000;
    let bind = |side: u8, ack: bool, counter: u64| {
        let key = relay::side_key(fixed::RELAY_SECRET, RelayId(77), side, expires);
        Bind {
            ack,
            relay_id: RelayId(77),
            side,
            expires,
            counter,
        }
        .encode(&key)
        .to_vec()
    };
    let relayed = |inner: &[u8]| {
        let mut p = vec![0u8; relay::RELAY_HEADER_LEN];
        relay::write_data_header(&mut p, RelayId(77));
        p.extend_from_slice(inner);
        p
    };
    let (_, request) = cyphonic_fuzz::handshake::start_initiator();
    vec![
        ("bind-side0", bind(0, false, 1)),
        ("bind-side1", bind(1, false, 7)),
        ("bind-ack", bind(0, true, 1)),
        ("relay-data", relayed(&data_packets()[0])),
        ("relay-tunnel-request", relayed(&request)),
    ]
}

fn reflect() -> Seeds {
    use cyphonic_proto::reflect::{ReflectRequest, ReflectResponse};
    let v4 = |s: &str| s.parse().expect("address");
    let nms_answer = ReflectResponse {
        txid: 77,
        observed: v4("192.0.2.101:40001"),
        nms: vec![v4("192.0.2.1:4502"), v4("[2001:db8::1]:4502")],
        relays: vec![v4("192.0.2.1:4503"), v4("[2001:db8::1]:4503")],
    };
    let trs_answer = ReflectResponse {
        txid: 78,
        observed: v4("[2001:db8::11]:40002"),
        nms: Vec::new(),
        relays: Vec::new(),
    };
    vec![
        ("request", ReflectRequest { txid: 77 }.encode().to_vec()),
        ("response-nms", nms_answer.encode()),
        ("response-trs", trs_answer.encode()),
    ]
}

fn trs_report() -> Seeds {
    use cyphonic_proto::trs_report::{report_key, TrsReport};
    let key = report_key(fixed::RELAY_SECRET);
    let addr = |s: &str| s.parse().expect("address");
    let both = TrsReport {
        sent: 1_900_000_000_000_000,
        sessions: 12,
        forwarded_bytes: 1 << 33,
        relays: vec![addr("192.0.2.2:4503"), addr("[2001:db8::2]:4503")],
    };
    let v4 = TrsReport {
        sent: 1_900_000_001_000_000,
        sessions: 0,
        forwarded_bytes: 0,
        relays: vec![addr("192.0.2.3:4503")],
    };
    vec![
        ("report-dual-stack", both.encode(&key)),
        ("report-v4", v4.encode(&key)),
        (
            "report-other-key",
            v4.encode(&report_key(b"another relay secret")),
        ),
    ]
}

fn nms_link() -> Seeds {
    use cyphonic_proto::nms_link::{LinkInitiator, LinkMessage};
    let addr = |s: &str| s.parse().expect("address");
    let body = |m: LinkMessage| m.encode()[4..].to_vec();
    let initiator = LinkInitiator {
        device_id: "n1".into(),
        fqdn: "n1.west.example".into(),
        vip4: Ipv4Addr::new(100, 64, 0, 2),
        vip6: "fd7a:6379:7068::2".parse().expect("address"),
        static_public: [7; 32],
        cert_serial: 0x1234,
        local_addrs: vec![addr("192.0.2.10:4600"), addr("[2001:db8::10]:4600")],
        observed: addr("198.51.100.7:40000"),
        observed_probe: Some(addr("198.51.100.7:40001")),
        transport: Transport::Udp,
        quic_port: 443,
        mapped: None,
    };
    let direction = RouteDirection {
        route_id: RouteId(9),
        pattern: RoutePattern::from_u8(2),
        peer: PeerInfo {
            fqdn: "n2.east.example".into(),
            vip4: Ipv4Addr::new(100, 65, 0, 2),
            vip6: "fd7a:6379:7068:1::2".parse().expect("address"),
            static_public: [3; 32],
            cert_serial: 77,
            cert_status: CertStatus::Good,
            endpoints: vec![addr("203.0.113.9:4600")],
        },
        tunnel_key: [5; 32],
        initiate: true,
        punch: false,
        spray: cyphonic_proto::signal::Spray::None,
        relay: Some(RelayOffer {
            relay_id: RelayId(4),
            side: 0,
            expires: 1_900_000_000,
            key: [6; 32],
            servers: vec![addr("203.0.113.1:4503")],
            quic_port: 443,
            tcp_port: 443,
        }),
        via: Transport::Udp,
        filter: None,
    };
    vec![
        (
            "hello",
            body(LinkMessage::Hello {
                domain: "east.example".into(),
                instance: "cloud-b".into(),
            }),
        ),
        (
            "direct",
            body(LinkMessage::Direct {
                ticket: 1,
                target: "n2.east.example".into(),
                initiator: Box::new(initiator),
            }),
        ),
        (
            "directed",
            body(LinkMessage::Directed {
                ticket: 1,
                direction: Box::new(direction),
            }),
        ),
        (
            "refused",
            body(LinkMessage::Refused {
                ticket: 2,
                code: DirectionErrorCode::Denied,
                message: "no".into(),
            }),
        ),
        ("not-here", body(LinkMessage::NotHere { ticket: 3 })),
        (
            "withdrawn",
            body(LinkMessage::Withdrawn {
                fqdn: "n2.east.example".into(),
                cert_serial: 0x77,
            }),
        ),
    ]
}

fn transport() -> Seeds {
    let mut stream = Vec::new();
    for packet in data_packets() {
        framing::encode(&packet, &mut stream).unwrap();
    }
    framing::encode_keepalive(&mut stream);
    let mut node = SignalCipher::new(fixed::SESSION, &fixed::SIGNAL_KEY, Role::Node, 1);
    framing::encode(&node.seal(&envelope(1, Message::KeepAlive)), &mut stream).unwrap();
    let mut partial = stream.clone();
    partial.truncate(stream.len() - 5);
    let cut = |cuts: u16, s: &[u8]| {
        let mut v = cuts.to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    };
    vec![
        ("frames", cut(0xffff, &stream)),
        ("frames-small-reads", cut(0x1234, &stream)),
        ("frames-partial", cut(0x0f0f, &partial)),
    ]
}

const CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIGbMEMCAQAwDTELMAkGA1UEAwwCbjEwKjAFBgMrZXADIQBc0MS2bGHcmK/Ynx3b
5aQXbqDKjtbLpGvQAWwlj0P5jKAAMAUGAytlcANBABxQ7s5dXHnq0UDgQwE0Ai4y
-----END CERTIFICATE REQUEST-----
";

fn login() -> Seeds {
    let ok = Response::LoginOk(LoginOk {
        session_id: fixed::SESSION.0,
        common_key: hex_string(&fixed::SIGNAL_KEY),
        fqdn: "n1.cyphonic.internal".into(),
        vip4: Ipv4Addr::new(100, 64, 0, 2),
        vip6: "fd7a:6379:7068::2".parse().unwrap(),
        domain: fixed::DOMAIN.into(),
        keepalive_secs: 15,
        nms_port: 4502,
        session_expires_in: 86_400,
        cloud_addrs: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
        quic_port: 443,
        tcp_port: 443,
        linked_domains: Vec::new(),
        instance_addrs: Vec::new(),
    });
    vec![
        (
            "enroll",
            login::encode_line(&Request::Enroll {
                device_id: "n1".into(),
                password: Password("correct horse battery staple".into()),
                csr_pem: CSR.into(),
            }),
        ),
        ("login", login::encode_line(&Request::Login {})),
        (
            "enroll-general",
            login::encode_line(&Request::EnrollGeneral {
                device_id: "camera".into(),
                csr_pem: CSR.into(),
            }),
        ),
        (
            "enrolled",
            login::encode_line(&Response::Enrolled {
                fqdn: "n1.cyphonic.internal".into(),
                cert_chain_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
                    .into(),
                root_pem: "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n".into(),
            }),
        ),
        ("login-ok", login::encode_line(&ok)),
        (
            "error",
            login::encode_line(&Response::error(
                login::code::BAD_CREDENTIALS,
                "unknown device or wrong password",
            )),
        ),
    ]
}

fn dns_query(id: u16, name: &str, t: hickory_proto::rr::RecordType) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::Name;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

fn dns() -> Seeds {
    use hickory_proto::rr::RecordType;
    // dig n2.cyphonic.internal A: RD and AD set, an EDNS(0) OPT record
    // (4096-byte payload).
    let dig = hex("beef 0120 0001 0000 0000 0001
         026e32 08637970686f6e6963 08696e7465726e616c 00 0001 0001
         00 0029 1000 00 00 0000 0000");
    vec![
        (
            "overlay-a",
            dns_query(0x1234, "n2.cyphonic.internal.", RecordType::A),
        ),
        (
            "overlay-aaaa",
            dns_query(0x1235, "N2.Cyphonic.Internal.", RecordType::AAAA),
        ),
        (
            "overlay-any",
            dns_query(0x1236, "printer.cyphonic.internal.", RecordType::ANY),
        ),
        (
            "overlay-mx",
            dns_query(0x1237, "cyphonic.internal.", RecordType::MX),
        ),
        (
            "forward-a",
            dns_query(0x1238, "www.example.com.", RecordType::A),
        ),
        ("dig-edns", dig),
        // A response (QR set) with a question: the resolver must not
        // answer it (see RESPONSES_ARE_DROPPED in src/dns.rs).
        (
            "response-with-question",
            hex("1237 8900 0001 0000 0000 0000 08637970686f6e6963 08696e7465726e616c 00 000f 0001"),
        ),
        // The adapter fixture's query for peer.example A.
        (
            "fixture-peer-example",
            hex("1234010000010000000000000470656572076578616d706c650000010001"),
        ),
    ]
}

// ---------------------------------------------------------------------------
// cyphonic-adapter: frames from crates/adapter/src/frame/mod.rs's fixtures
// (real-world shaped, every checksum checked by tcpdump).

const ARP_REQUEST_GATEWAY: &str = "
    ffffffffffff 020000000a01 0806
    0001 0800 06 04 0001 020000000a01 6440000a 000000000000 64400001";
const ARP_PROBE_PADDED: &str = "
    ffffffffffff 020000000a01 0806
    0001 0800 06 04 0001 020000000a01 00000000 000000000000 6440000a
    000000000000000000000000000000000000";
const RS_LINK_LOCAL: &str = "
    333300000002 020000000a01 86dd
    60000000 0010 3a ff fe80000000000000000000fffe000a01 ff020000000000000000000000000002
    85 00 672c 00000000
    0101020000000a01";
const NS_DAD: &str = "
    3333ff00000a 020000000a01 86dd
    60000000 0020 3a ff 00000000000000000000000000000000 ff0200000000000000000001ff00000a
    87 00 4fb0 00000000 fd7a637970680000000000000000000a
    0e01a1b2c3d4e5f6";
const NS_RESOLVE_PEER: &str = "
    3333ff010020 020000000a01 86dd
    60000000 0020 3a ff fd7a637970680000000000000000000a ff0200000000000000000001ff010020
    87 00 ca98 00000000 fd7a6379706800000000000000010020
    0101020000000a01";
const NS_ROUTER_LL: &str = "
    3333ff000001 020000000a01 86dd
    60000000 0020 3a ff fe80000000000000000000fffe000a01 ff0200000000000000000001ff000001
    87 00 6899 00000000 fe80000000000000000000fffe000001
    0101020000000a01";
const DHCP4_DISCOVER: &str = "
    ffffffffffff 020000000a01 0800
    4510 0148 0000 0000 40 11 7996 00000000 ffffffff
    0044 0043 0134 b9af
    010106003903f326000000000000000000000000000000000000000002000000
    0a01000000000000000000000000000000000000000000000000000000000000
    0000000000000000000000000000000000000000000000000000000000000000
    0000000000000000000000000000000000000000000000000000000000000000
    0000000000000000000000000000000000000000000000000000000000000000
    0000000000000000000000000000000000000000000000000000000000000000
    0000000000000000000000000000000000000000000000000000000000000000
    0000000000000000000000006382536335010137040103060fff000000000000
    0000000000000000000000000000000000000000000000000000000000000000
    000000000000000000000000";
const DHCP6_SOLICIT: &str = "
    333300010002 020000000a01 86dd
    60000000 0030 11 01 fe80000000000000000000fffe000a01 ff020000000000000000000000010002
    0222 0223 0030 c211
    015a1b2c0001000a00030001020000000a010008000200000003000c00000a010000000000000000";
const DNS4_QUERY: &str = "
    020000000001 020000000a01 0800
    4500 003a 1c46 4000 40 11 55e2 6440000a 64400001
    9c40 0035 0026 0f3b
    1234010000010000000000000470656572076578616d706c650000010001";
const DNS6_QUERY: &str = "
    020000000001 020000000a01 86dd
    60000000 0026 11 40 fd7a637970680000000000000000000a fd7a6379706800000000000000000001
    9c41 0035 0026 03f9
    4321010000010000000000000470656572076578616d706c6500001c0001";
const ICMP4_ECHO_PEER: &str = "
    020000000001 020000000a01 0800
    4500 0024 5bd1 4000 40 01 156a 6440000a 64400114
    08 00 4b4a 00010001 637970686f6e6963";
const RA_ROGUE: &str = "
    333300000001 02000000ee01 86dd
    60000000 0058 3a ff fe80000000000000000000fffe00ee01 ff020000000000000000000000000001
    86 00 0696 40c0 0708 00000000 00000000
    010102000000ee01
    05010000000005dc
    030440c000015180000038400000000020010db8000100000000000000000000
    190300000000025820010db8000100000000000000000053";
const NA_UNSOLICITED: &str = "
    333300000001 020000000a01 86dd
    60000000 0020 3a ff fd7a637970680000000000000000000a ff020000000000000000000000000001
    88 00 a7d1 20000000 fd7a637970680000000000000000000a
    0201020000000a01";
const MLD_REPORT: &str = "
    333300000016 020000000a01 86dd
    60000000 0024 00 01 fe80000000000000000000fffe000a01 ff020000000000000000000000000016
    3a00050200000100
    8f0067fe0000000104000000ff0200000000000000000001ff00000a";

fn frame() -> Seeds {
    [
        ("arp-request-gateway", ARP_REQUEST_GATEWAY),
        ("arp-probe-padded", ARP_PROBE_PADDED),
        ("rs-link-local", RS_LINK_LOCAL),
        ("ns-dad", NS_DAD),
        ("ns-resolve-peer", NS_RESOLVE_PEER),
        ("ns-router-ll", NS_ROUTER_LL),
        ("dhcp4-discover", DHCP4_DISCOVER),
        ("dhcp6-solicit", DHCP6_SOLICIT),
        ("dns4-query", DNS4_QUERY),
        ("dns6-query", DNS6_QUERY),
        ("icmp4-echo-peer", ICMP4_ECHO_PEER),
        ("ra-rogue", RA_ROGUE),
        ("na-unsolicited", NA_UNSOLICITED),
        ("mld-report", MLD_REPORT),
    ]
    .into_iter()
    .map(|(name, h)| (name, hex(h)))
    .collect()
}

/// The UDP payload of a fixture frame without IP options.
fn udp_payload(frame: &[u8]) -> Vec<u8> {
    let ip = if frame[12..14] == [0x08, 0x00] {
        20
    } else {
        40
    };
    frame[14 + ip + 8..].to_vec()
}

fn dhcp4() -> Seeds {
    use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
    use dhcproto::Encodable;
    let z = Ipv4Addr::UNSPECIFIED;
    let client = |ty: MessageType, build: &dyn Fn(&mut Message)| {
        let mut m = Message::new_with_id(0x3903_f326, z, z, z, z, &fixed::GN_A.0);
        m.opts_mut().insert(DhcpOption::MessageType(ty));
        m.opts_mut().insert(DhcpOption::ClientIdentifier(
            [&[1][..], &fixed::GN_A.0].concat(),
        ));
        build(&mut m);
        m.to_vec().unwrap()
    };
    let prl = DhcpOption::ParameterRequestList(
        [1u8, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42]
            .iter()
            .map(|c| OptionCode::from(*c))
            .collect(),
    );
    // ISC dhclient's DISCOVER, byte for byte as its tests build it (for
    // GN A): flags 0, a remembered address, its host name, its request
    // list, End, padded to 300 bytes.
    let mut dhclient = vec![0x01, 0x01, 0x06, 0x00, 0x3c, 0x9a, 0x1f, 0x27, 0, 0, 0, 0];
    dhclient.extend([0; 16]);
    dhclient.extend(fixed::GN_A.0);
    dhclient.extend([0; 10 + 64 + 128]);
    dhclient.extend([99, 130, 83, 99]);
    dhclient.extend([53, 1, 1]);
    dhclient.extend([50, 4, 100, 64, 0, 10]);
    dhclient.extend([12, 7]);
    dhclient.extend(b"printer");
    dhclient.extend([55, 13, 1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42]);
    dhclient.push(255);
    dhclient.resize(300, 0);
    vec![
        ("discover-dhclient", dhclient),
        ("discover-fixture", udp_payload(&hex(DHCP4_DISCOVER))),
        (
            "request-selecting",
            client(MessageType::Request, &|m| {
                m.set_flags(Flags::default().set_broadcast());
                m.opts_mut()
                    .insert(DhcpOption::ServerIdentifier(fixed::GW4));
                m.opts_mut()
                    .insert(DhcpOption::RequestedIpAddress(fixed::A4));
                m.opts_mut().insert(prl.clone());
            }),
        ),
        (
            "request-renewing",
            client(MessageType::Request, &|m| {
                m.set_ciaddr(fixed::A4);
            }),
        ),
        (
            "inform",
            client(MessageType::Inform, &|m| {
                m.set_ciaddr(fixed::A4);
                m.opts_mut().insert(prl.clone());
            }),
        ),
        (
            "release",
            client(MessageType::Release, &|m| {
                m.set_ciaddr(fixed::A4);
                m.opts_mut()
                    .insert(DhcpOption::ServerIdentifier(fixed::GW4));
            }),
        ),
        (
            "decline",
            client(MessageType::Decline, &|m| {
                m.opts_mut()
                    .insert(DhcpOption::RequestedIpAddress(fixed::A4));
                m.opts_mut()
                    .insert(DhcpOption::ServerIdentifier(fixed::GW4));
            }),
        ),
    ]
}

fn dhcp6() -> Seeds {
    use cyphonic_fuzz::dhcp6::{duid_llt, server, IAID};
    use dhcproto::v6::{self, DhcpOption, DhcpOptions, IAAddr, MessageType, OptionCode, IANA};
    use dhcproto::Encodable;
    let server_id = DhcpOption::ServerId(server().server_duid().as_bytes().to_vec());
    let ia_na = |addrs: &[Ipv6Addr]| {
        let mut opts = DhcpOptions::new();
        for &addr in addrs {
            opts.insert(DhcpOption::IAAddr(IAAddr {
                addr,
                preferred_life: 7200,
                valid_life: 7500,
                opts: DhcpOptions::new(),
            }));
        }
        DhcpOption::IANA(IANA {
            id: IAID,
            t1: 0,
            t2: 0,
            opts,
        })
    };
    // As `dhclient -6` sends them: Client ID (DUID-LLT), Elapsed Time, ORO
    // for DNS and the search list, then the message's own options.
    let msg = |ty: MessageType, n: u8, extra: Vec<DhcpOption>| {
        let mut m = v6::Message::new_with_id(ty, [0x10, 0x08, n]);
        let o = m.opts_mut();
        o.insert(DhcpOption::ClientId(duid_llt(fixed::GN_A)));
        o.insert(DhcpOption::ElapsedTime(0));
        if ty != MessageType::Release && ty != MessageType::Decline {
            o.insert(DhcpOption::ORO(v6::ORO {
                opts: vec![OptionCode::DomainNameServers, OptionCode::DomainSearchList],
            }));
        }
        for e in extra {
            o.insert(e);
        }
        m.to_vec().unwrap()
    };
    vec![
        ("solicit", msg(MessageType::Solicit, 1, vec![ia_na(&[])])),
        (
            "solicit-rapid-commit",
            msg(
                MessageType::Solicit,
                2,
                vec![ia_na(&[]), DhcpOption::RapidCommit],
            ),
        ),
        ("solicit-fixture-duid-ll", udp_payload(&hex(DHCP6_SOLICIT))),
        (
            "request",
            msg(
                MessageType::Request,
                3,
                vec![server_id.clone(), ia_na(&[fixed::A6])],
            ),
        ),
        (
            "renew",
            msg(
                MessageType::Renew,
                4,
                vec![server_id.clone(), ia_na(&[fixed::A6])],
            ),
        ),
        (
            "rebind",
            msg(MessageType::Rebind, 5, vec![ia_na(&[fixed::A6])]),
        ),
        (
            "confirm",
            msg(MessageType::Confirm, 6, vec![ia_na(&[fixed::A6])]),
        ),
        (
            "release",
            msg(
                MessageType::Release,
                7,
                vec![server_id.clone(), ia_na(&[fixed::A6])],
            ),
        ),
        (
            "information-request",
            msg(MessageType::InformationRequest, 8, vec![]),
        ),
    ]
}

fn ra() -> Seeds {
    let icmp = |frame: &str| hex(frame)[14 + 40..].to_vec();
    let mut advertiser =
        RouterAdvertiser::new(cyphonic_fuzz::ra::config(), 1, Instant::now()).unwrap();
    let ours = advertiser
        .poll_advertisement(Instant::now())
        .expect("the first advertisement is due at once");
    let na = NdiscRepr::NeighborAdvert {
        flags: NaFlags::SOLICITED | NaFlags::OVERRIDE,
        target_addr: fixed::PEER6,
        lladdr: Some(fixed::ADAPTER_MAC),
    };
    // Scripts: [what, delay ms u16]: 0-2 a solicitation, 3 ignored ones,
    // 4-5 the timer, 6 a poll, 7 shutdown.
    let script = |steps: &[(u8, u16)]| {
        let mut v = vec![1u8];
        for (what, ms) in steps {
            v.push(*what);
            v.extend_from_slice(&ms.to_be_bytes());
        }
        v
    };
    vec![
        ("ra-ours", with_mode(0, &ours.icmpv6)),
        ("ra-rogue", with_mode(0, &icmp(RA_ROGUE))),
        ("rs-link-local", with_mode(0, &icmp(RS_LINK_LOCAL))),
        ("ns-dad", with_mode(0, &icmp(NS_DAD))),
        ("na-proxy", with_mode(0, &na.to_bytes())),
        (
            "script-boot",
            script(&[
                (4, 0),
                (0, 100),
                (4, 0),
                (1, 2000),
                (6, 400),
                (4, 0),
                (4, 0),
            ]),
        ),
        (
            "script-solicitations-and-shutdown",
            script(&[
                (4, 0),
                (0, 5000),
                (3, 10),
                (2, 10),
                (4, 0),
                (6, 60000),
                (7, 1),
                (0, 5),
            ]),
        ),
    ]
}

// ---------------------------------------------------------------------------

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
