//! A lab internet with real kernel NAT, for NAT traversal scenarios.
//!
//! ```text
//!                    "internet": bridge br0 in namespace `sw`
//!   192.0.2.0/24, 2001:db8::/64 (documentation addresses)
//!   |-- cloud  192.0.2.1   2001:db8::1    AS + NMS + TRS (`cloud run`)
//!   |-- trs2   192.0.2.2   2001:db8::2    a second TRS (`--role trs`), optional
//!   |-- dns    192.0.2.53  2001:db8::53   dnsmasq, the nodes' upstream resolver
//!   |-- stun   192.0.2.54 + 192.0.2.55    a classic STUN server (RFC 3489: two
//!   |                                     addresses x ports 3478, 3479), only
//!   |                                     with UPnP routers
//!   |-- global nodes: 192.0.2.1x and/or 2001:db8::1x (placements v4, v6, ds)
//!   `-- NAT routers: WAN 192.0.2.1xx, IPv4 only
//!         nft masquerade (eim) or masquerade fully-random (sym), and an
//!         input firewall (no unsolicited traffic to the router itself);
//!         or no input firewall, behind an ISP router of its own
//!         (`isp-<router>`, 192.0.2.2xx, proxy ARP for the WAN address)
//!         `-- bridge `lan` in the router's namespace, gateway .1 of a /28
//!               `-- NATed nodes .10, .11, ... (private IPv4 only,
//!                   default route via the router)
//!
//!   UPnP routers ([`Topology::upnp_router`]): a router without input
//!   firewall behind an ISP router, running miniupnpd (nftables backend)
//!         WAN `wan` -- STUN to 192.0.2.54:3478 at start: all four answers
//!                      (no change, change port, change IP, both) arrive
//!                      and name the WAN address, so miniupnpd counts the
//!                      (documentation, "reserved") address as public and
//!                      enables port forwarding, with it as the external
//!                      address
//!         LAN `lan` -- UPnP IGD (SSDP, HTTP port 5000), and PCP + NAT-PMP
//!                      on port 5351 unless the router speaks IGD only;
//!                      maps UDP/TCP 1024-65535 for the asking host only
//!         nft: table inet filter, chains `miniupnpd` (from the forward
//!              hook, policy accept), `prerouting_miniupnpd` (a granted
//!              mapping's dnat) and `postrouting_miniupnpd`
//! ```
//!
//! Placements (RFC 4787 terms for the NATs):
//! - `v6`: global IPv6 only (IPv4 absent: no address, no route);
//! - `v4`: global IPv4 only (IPv6 disabled on the interface);
//! - `ds`: both;
//! - `eim`: private IPv4 behind `masquerade`: endpoint-independent mapping
//!   (Linux keeps the source port), address-and-port-dependent filtering;
//! - `sym`: private IPv4 behind `masquerade fully-random`: a new port per
//!   destination, i.e. a symmetric NAT.
//!
//! Each router has a bridge for its LAN, so several nodes can share one NAT;
//! a router can also get a short conntrack UDP timeout (per namespace).
//! Everything is built on one [`Overlay`], so the shared scenario helpers
//! (enroll, status, iperf, ...) work on it unchanged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};

use super::overlay::{
    init_cloud, set_config_keys, NodeHandle, Overlay, Underlay, GENERAL_ADDR, GENERAL_NAME,
};
use crate::{wait_until, Lab};

pub const CLOUD_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const CLOUD_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const TRS2_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const TRS2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const DNS_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
pub const DNS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53);
pub const TRS_PORT: u16 = 4503;

/// The internet bridge's namespace.
const INTERNET: &str = "sw";
/// First host number of global nodes (192.0.2.11, 2001:db8::11, ...).
const FIRST_GLOBAL_HOST: u8 = 11;
/// First host number of router WANs (192.0.2.101, ...).
const FIRST_WAN_HOST: u8 = 101;
/// Router LANs, in the order routers are declared: the /28 blocks of
/// 198.51.100.0/24 and 203.0.113.0/24, the first sixteen at the starts of
/// the /27 blocks earlier versions of the lab used. The general name's
/// address (198.51.100.80) falls in the last block; scenarios here never
/// contact it, and that block is only used by a 32nd router.
const LANS: [Ipv4Addr; 32] = {
    let first = [
        (198, 51, 100, 0),
        (198, 51, 100, 128),
        (198, 51, 100, 192),
        (203, 0, 113, 0),
        (203, 0, 113, 64),
        (203, 0, 113, 128),
        (203, 0, 113, 192),
        (198, 51, 100, 32),
        (198, 51, 100, 160),
        (198, 51, 100, 224),
        (203, 0, 113, 32),
        (203, 0, 113, 96),
        (203, 0, 113, 160),
        (203, 0, 113, 224),
        (198, 51, 100, 96),
        (198, 51, 100, 64),
        // The second halves of those /27 blocks.
        (198, 51, 100, 16),
        (198, 51, 100, 144),
        (198, 51, 100, 208),
        (203, 0, 113, 16),
        (203, 0, 113, 80),
        (203, 0, 113, 144),
        (203, 0, 113, 208),
        (198, 51, 100, 48),
        (198, 51, 100, 176),
        (198, 51, 100, 240),
        (203, 0, 113, 48),
        (203, 0, 113, 112),
        (203, 0, 113, 176),
        (203, 0, 113, 240),
        (198, 51, 100, 112),
        (198, 51, 100, 80),
    ];
    let mut out = [Ipv4Addr::UNSPECIFIED; 32];
    let mut i = 0;
    while i < 32 {
        let (a, b, c, d) = first[i];
        out[i] = Ipv4Addr::new(a, b, c, d);
        i += 1;
    }
    out
};
const LAN_PREFIX: u8 = 28;
/// Ports a carrier NAT maps deterministically, one public port per
/// subscriber and port (`10000 * (subscriber + 1) + port % 10000`): the
/// tunnel port and the lab's mapping probes'. Every other port it
/// masquerades.
const CARRIER_PORTS: [u16; 2] = [4501, 40123];
/// A router's ISP hop (see [`Topology::plain_router`]): 192.0.2.201, ...
const FIRST_ISP_HOST: u8 = 201;
/// A LAN's host number for nodes that move onto it (after its own nodes).
const ROAM_LAN_HOST: u8 = 14;
/// A LAN's nodes: .10, .11, ... of its block.
const FIRST_LAN_HOST: u8 = 10;
/// The STUN server's two addresses (RFC 3489 wants two, for its
/// change-IP answers); miniupnpd asks the first.
pub const STUN_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 0, 2, 54), Ipv4Addr::new(192, 0, 2, 55)];
/// The STUN server's two ports; miniupnpd asks the first.
pub const STUN_PORTS: [u16; 2] = [3478, 3479];
/// The classic STUN server the UPnP routers' miniupnpd asks.
const STUN_SERVER: &str = include_str!("stun_server.py");
/// miniupnpd's UPnP IGD HTTP port on its LAN (its description is at
/// `http://<gateway>:5000/rootDesc.xml`).
pub const UPNP_HTTP_PORT: u16 = 5000;
/// What miniupnpd logs once STUN has shown nothing filters in front of it.
const FORWARDING_ENABLED: &str = "Port forwarding is now enabled";
/// How long the STUN server and miniupnpd may take to come up (miniupnpd
/// sends its STUN requests up to three times, 3 s apart).
const UPNP_READY_TIMEOUT: Duration = Duration::from_secs(12);
/// miniupnpd's nftables: its chains (the names it uses by default), the
/// forward chain with policy accept so the router still forwards its LAN,
/// and the nat hooks that jump to the chains it fills.
const MINIUPNPD_NFT: &str = "\
table inet filter {
  chain miniupnpd {
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
  chain forward {
    type filter hook forward priority 0; policy accept;
    jump miniupnpd
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
  }
}";

/// Where a node sits on the lab internet (the placements of
/// docs/routing.md).
pub use cyphonic_cloud_core::route::Placement;

/// The NAT kind the cloud should detect for a node placed here (a node's
/// `cyphonic status --json` shows it as `cloud.nat`).
pub fn expected_nat(p: Placement) -> &'static str {
    p.nat().as_str()
}

/// How a NAT router maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// `masquerade`: the same external port for every destination.
    Eim,
    /// `masquerade fully-random`: a new external port per destination.
    Sym,
}

impl NatKind {
    pub fn placement(self) -> Placement {
        match self {
            NatKind::Eim => Placement::Eim,
            NatKind::Sym => Placement::Sym,
        }
    }

    fn masquerade(self) -> &'static str {
        match self {
            NatKind::Eim => "masquerade",
            NatKind::Sym => "masquerade fully-random",
        }
    }
}

struct RouterSpec {
    name: String,
    kind: NatKind,
    udp_timeout: Option<u32>,
    /// Drops unsolicited WAN traffic to itself (`ct state new drop`), as
    /// home routers do; without, it only masquerades.
    input_firewall: bool,
    /// Its WAN reaches the internet through a router of its own (an ISP
    /// hop) instead of sitting on the internet's link.
    isp_hop: bool,
    /// `Some(hairpin)`: a carrier NAT, whose LAN is the carrier's network
    /// of home routers ([`Topology::carrier`]).
    carrier: Option<bool>,
    /// The carrier NAT its WAN sits behind, if any.
    behind: Option<String>,
    /// The MTU of the link between it and its ISP router (both ends):
    /// every path through it carries at most this.
    uplink_mtu: Option<u16>,
    /// Both routers on the uplink drop the ICMP errors that would say so
    /// (a firewall that filters ICMP): the path is silent about its size.
    icmp_filtered: bool,
    /// `Some(natpmp)`: it runs miniupnpd, which grants port mappings over
    /// UPnP IGD, and over PCP and NAT-PMP too when `natpmp`.
    upnp: Option<bool>,
}

impl RouterSpec {
    /// A NAT router of `kind` with an input firewall, on the internet's
    /// link: what the constructors of [`Topology`] start from.
    fn new(name: &str, kind: NatKind) -> RouterSpec {
        RouterSpec {
            name: name.to_owned(),
            kind,
            udp_timeout: None,
            input_firewall: true,
            isp_hop: false,
            carrier: None,
            behind: None,
            uplink_mtu: None,
            icmp_filtered: false,
            upnp: None,
        }
    }
}

struct NodeSpec {
    name: String,
    placement: Placement,
    router: Option<String>,
}

/// What to build: routers, then nodes on the internet or behind a router.
#[derive(Default)]
pub struct Topology {
    routers: Vec<RouterSpec>,
    nodes: Vec<NodeSpec>,
    second_trs: bool,
}

impl Topology {
    pub fn new() -> Topology {
        Topology::default()
    }

    /// A NAT router with its own WAN address and LAN, and an input
    /// firewall.
    pub fn router(mut self, name: &str, kind: NatKind) -> Topology {
        self.routers.push(RouterSpec::new(name, kind));
        self
    }

    /// A carrier-grade NAT on the internet's link, whose LAN is the
    /// carrier's network: home routers sit there
    /// ([`Topology::router_behind`]). It maps endpoint-independently as
    /// carrier NATs must (RFC 6888): the ports of [`CARRIER_PORTS`]
    /// deterministically, one public port per subscriber and port (RFC
    /// 7422), the others by masquerade; it drops unsolicited traffic to
    /// itself. With `hairpin`, a packet from one subscriber to another's
    /// public mapping of those ports comes back into the carrier's network
    /// from the sender's public mapping (RFC 4787 REQ-9); without, it goes
    /// to the carrier NAT itself, as Linux's NAT does unless told.
    pub fn carrier(mut self, name: &str, hairpin: bool) -> Topology {
        self.routers.push(RouterSpec {
            carrier: Some(hairpin),
            ..RouterSpec::new(name, NatKind::Eim)
        });
        self
    }

    /// A home router (input firewall) whose WAN is on `carrier`'s network
    /// (declared before it) instead of the internet's link.
    pub fn router_behind(mut self, name: &str, kind: NatKind, carrier: &str) -> Topology {
        self.routers.push(RouterSpec {
            behind: Some(carrier.to_owned()),
            ..RouterSpec::new(name, kind)
        });
        self
    }

    /// A router that only masquerades (no input firewall: what many Linux
    /// routers are), behind an ISP router of its own, as homes are: its
    /// WAN address stays on the internet's /24, which the ISP router
    /// proxies (proxy ARP), and every packet between it and the internet
    /// crosses one more router.
    pub fn plain_router(mut self, name: &str, kind: NatKind) -> Topology {
        self.routers.push(RouterSpec {
            input_firewall: false,
            isp_hop: true,
            ..RouterSpec::new(name, kind)
        });
        self
    }

    /// A router that only masquerades, behind an ISP router
    /// ([`Topology::plain_router`]), whose link to the ISP carries at most
    /// `mtu` bytes (PPPoE, mobile, tunnelled uplinks): both routers on it
    /// answer a larger packet that may not be fragmented with ICMP
    /// Fragmentation Needed, the ISP's toward the internet.
    pub fn narrow_router(mut self, name: &str, kind: NatKind, mtu: u16) -> Topology {
        self = self.plain_router(name, kind);
        if let Some(r) = self.routers.last_mut() {
            r.uplink_mtu = Some(mtu);
        }
        self
    }

    /// [`Topology::narrow_router`] whose uplink says nothing: both routers
    /// on it drop ICMP Fragmentation Needed (and Packet Too Big), as
    /// firewalls that filter ICMP do. Only path MTU probing finds the size.
    pub fn silent_narrow_router(mut self, name: &str, kind: NatKind, mtu: u16) -> Topology {
        self = self.narrow_router(name, kind, mtu);
        if let Some(r) = self.routers.last_mut() {
            r.icmp_filtered = true;
        }
        self
    }

    /// A home router that grants port mappings: miniupnpd, with UPnP IGD
    /// and, when `natpmp`, PCP and NAT-PMP (without, it speaks IGD only).
    /// Otherwise a [`Topology::plain_router`]: it only masquerades (no
    /// input firewall, so the STUN answers from the STUN server's other
    /// address and port reach miniupnpd) and sits behind an ISP router.
    /// The lab gets the STUN server miniupnpd needs to enable forwarding
    /// on a documentation address, and [`Topology::build`] fails with
    /// miniupnpd's log when it does not.
    pub fn upnp_router(mut self, name: &str, kind: NatKind, natpmp: bool) -> Topology {
        self.routers.push(RouterSpec {
            input_firewall: false,
            isp_hop: true,
            upnp: Some(natpmp),
            ..RouterSpec::new(name, kind)
        });
        self
    }

    /// A NAT router whose UDP mappings expire after `secs` of silence
    /// (`nf_conntrack_udp_timeout` and `_stream` in its namespace).
    pub fn router_with_udp_timeout(mut self, name: &str, kind: NatKind, secs: u32) -> Topology {
        self.routers.push(RouterSpec {
            udp_timeout: Some(secs),
            ..RouterSpec::new(name, kind)
        });
        self
    }

    /// A node on the internet: `v6`, `v4` or `ds`.
    pub fn node(mut self, name: &str, placement: Placement) -> Topology {
        self.nodes.push(NodeSpec {
            name: name.to_owned(),
            placement,
            router: None,
        });
        self
    }

    /// A node on `router`'s LAN (its placement is the router's kind).
    pub fn node_behind(mut self, name: &str, router: &str) -> Topology {
        let placement = self
            .routers
            .iter()
            .find(|r| r.name == router)
            .map_or(Placement::Eim, |r| r.kind.placement());
        self.nodes.push(NodeSpec {
            name: name.to_owned(),
            placement,
            router: Some(router.to_owned()),
        });
        self
    }

    /// A second TRS in namespace `trs2` (192.0.2.2, 2001:db8::2), listed
    /// after the cloud's own in `trs_public`.
    pub fn second_trs(mut self) -> Topology {
        self.second_trs = true;
        self
    }

    /// Creates the namespaces, links, NATs and the DNS server, initialises
    /// the cloud (and the second TRS's copy of it) with every node as a
    /// device. Nothing of cyphonic runs yet: see [`NatLab::start`].
    pub fn build(self, scenario: &str, bin: &Path) -> anyhow::Result<NatLab> {
        ensure!(
            self.routers.len() <= LANS.len(),
            "at most {} NAT routers",
            LANS.len()
        );
        let mut lab = Lab::new(scenario)?;
        lab.add_ns(INTERNET)?;
        lab.sh(
            INTERNET,
            "ip link add br0 type bridge && ip link set br0 up",
        )?;
        let mut ports = 0u32;

        let cloud_ns = lab.add_ns("cloud")?;
        attach(
            &mut lab,
            &mut ports,
            "cloud",
            "eth0",
            &[&format!("{CLOUD_V4}/24"), &format!("{CLOUD_V6}/64")],
        )?;
        let mut trs2_ns = None;
        if self.second_trs {
            trs2_ns = Some(lab.add_ns("trs2")?);
            attach(
                &mut lab,
                &mut ports,
                "trs2",
                "eth0",
                &[&format!("{TRS2_V4}/24"), &format!("{TRS2_V6}/64")],
            )?;
        }
        lab.add_ns("dns")?;
        attach(
            &mut lab,
            &mut ports,
            "dns",
            "eth0",
            &[&format!("{DNS_V4}/24"), &format!("{DNS_V6}/64")],
        )?;

        if self.routers.iter().any(|r| r.upnp.is_some()) {
            start_stun(&mut lab, &mut ports)?;
        }

        let mut routers = Vec::new();
        for (i, r) in self.routers.iter().enumerate() {
            let handle = build_router(&mut lab, &mut ports, i, r, &mut routers)?;
            routers.push(handle);
        }
        // Every miniupnpd at once, then the wait for each.
        let mut daemons = Vec::new();
        for h in routers.iter().filter(|h| h.upnp.is_some()) {
            daemons.push((start_miniupnpd(&mut lab, h)?, h));
        }
        for (pid, h) in daemons {
            wait_miniupnpd(&mut lab, h, pid)?;
        }

        let mut handles = Vec::new();
        let mut nodes = Vec::new();
        let mut host = FIRST_GLOBAL_HOST;
        for spec in &self.nodes {
            let ns = lab.add_ns(&spec.name)?;
            let (addrs, public, router) = match &spec.router {
                None => {
                    ensure!(
                        !matches!(spec.placement, Placement::Eim | Placement::Sym),
                        "node {}: put {} nodes behind a router (node_behind)",
                        spec.name,
                        spec.placement.name()
                    );
                    ensure!(host < FIRST_WAN_HOST, "too many global nodes");
                    let mut addrs: Vec<IpAddr> = Vec::new();
                    if spec.placement.has_v4() {
                        addrs.push(Ipv4Addr::new(192, 0, 2, host).into());
                    }
                    if spec.placement.has_v6() {
                        addrs.push(
                            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, host_v6(host)).into(),
                        );
                    }
                    host += 1;
                    let cidrs: Vec<String> = addrs
                        .iter()
                        .map(|a| match a {
                            IpAddr::V4(a) => format!("{a}/24"),
                            IpAddr::V6(a) => format!("{a}/64"),
                        })
                        .collect();
                    let cidrs: Vec<&str> = cidrs.iter().map(String::as_str).collect();
                    attach(&mut lab, &mut ports, &spec.name, "eth0", &cidrs)?;
                    (addrs.clone(), addrs, None)
                }
                Some(rname) => {
                    let ri = routers
                        .iter()
                        .position(|r: &RouterHandle| &r.name == rname)
                        .with_context(|| format!("node {}: no router {rname}", spec.name))?;
                    let r = &mut routers[ri];
                    let addr = r.next_lan_addr()?;
                    r.lan_ports += 1;
                    let port = format!("l{}", r.lan_ports);
                    let r_ns = r.ns.clone();
                    let (gw, wan) = (r.lan_gw, r.public);
                    lab.link(
                        &spec.name,
                        "eth0",
                        &[&format!("{addr}/{LAN_PREFIX}")],
                        &r_ns,
                        &port,
                        &[],
                    )?;
                    lab.sh(&r_ns, &format!("ip link set {port} master lan"))?;
                    lab.route(&spec.name, "default", &gw.to_string())?;
                    (vec![addr.into()], vec![wan.into()], Some(ri))
                }
            };
            if !spec.placement.has_v6() {
                lab.sysctl(&ns, &[("net.ipv6.conf.eth0.disable_ipv6", "1")])?;
            }
            let primary = if spec.placement.has_v4() {
                addrs.iter().find(|a| a.is_ipv4())
            } else {
                addrs.first()
            };
            handles.push(NodeHandle {
                name: spec.name.clone(),
                ns,
                state_dir: lab.dir().join(format!("{}-state", spec.name)),
                underlay: *primary.context("node without an address")?,
                pid: None,
                // IPv6-only nodes can reach the cloud over IPv6 only.
                cloud: (!spec.placement.has_v4()).then_some(CLOUD_V6.into()),
                adapter_lan: None,
            });
            nodes.push(NatNode {
                placement: spec.placement,
                router,
                addrs,
                public,
            });
        }

        // The upstream resolver, reachable over both families.
        lab.start_dns_server(
            "dns",
            &[DNS_V4.into(), DNS_V6.into()],
            &[(GENERAL_NAME, GENERAL_ADDR.parse()?)],
        )?;
        for (h, n) in handles.iter().zip(&nodes) {
            let mut conf = String::new();
            if n.placement.has_v4() {
                conf.push_str(&format!("nameserver {DNS_V4}\n"));
            }
            if n.placement.has_v6() {
                conf.push_str(&format!("nameserver {DNS_V6}\n"));
            }
            lab.set_resolv_conf(&h.name, &conf)?;
        }

        let names: Vec<&str> = handles.iter().map(|n| n.name.as_str()).collect();
        let cloud_dir = init_cloud(&lab, bin, &cloud_ns, &names)?;
        let cloud_cfg = cloud_dir.join("cloud.toml");
        let mut relays: Vec<SocketAddr> =
            vec![(CLOUD_V4, TRS_PORT).into(), (CLOUD_V6, TRS_PORT).into()];
        let mut trs2 = None;
        if let Some(ns) = trs2_ns {
            relays.extend::<[SocketAddr; 2]>([
                (TRS2_V4, TRS_PORT).into(),
                (TRS2_V6, TRS_PORT).into(),
            ]);
            set_config_keys(&cloud_cfg, &[("trs_public", toml_addrs(&relays))])?;
            // The second TRS: a copy of the cloud's folder (the relay
            // secret it shares with the NMS), listening on its own address.
            let dir = lab.dir().join("trs2");
            copy_dir(&cloud_dir, &dir)?;
            let config = dir.join("cloud.toml");
            set_config_keys(
                &config,
                &[
                    ("data_dir", format!("{:?}", dir.to_string_lossy())),
                    (
                        "trs_listen",
                        toml_addrs(&[(TRS2_V4, TRS_PORT).into(), (TRS2_V6, TRS_PORT).into()]),
                    ),
                ],
            )?;
            trs2 = Some(Trs2 {
                ns,
                dir,
                config,
                pid: None,
            });
        }

        let keepalive = node_supports_keepalive(&lab, bin);
        let o = Overlay {
            lab,
            bin: bin.to_owned(),
            underlay: Underlay::V4,
            cloud_ns,
            cloud_dir,
            cloud_pid: None,
            cloud_addr: CLOUD_V4.into(),
            nodes: handles,
            node_args: if keepalive {
                vec!["--keepalive".into(), "1".into()]
            } else {
                Vec::new()
            },
        };
        Ok(NatLab {
            o,
            nodes,
            routers,
            trs2,
            relays,
            keepalive_flag: keepalive,
        })
    }
}

/// A node's place in the NAT lab, beside its [`NodeHandle`] (same index).
pub struct NatNode {
    pub placement: Placement,
    /// Index into [`NatLab::routers`] for NATed nodes.
    pub router: Option<usize>,
    /// The addresses on the node's own interface.
    pub addrs: Vec<IpAddr>,
    /// The addresses the internet sees it from: its own (global nodes) or
    /// its router's WAN (its carrier NAT's, behind one).
    pub public: Vec<IpAddr>,
}

pub struct RouterHandle {
    pub name: String,
    pub ns: String,
    pub kind: NatKind,
    /// Its WAN address: on the internet, or on its carrier's network.
    pub wan: Ipv4Addr,
    /// The address the internet sees its LAN from: its WAN, or its
    /// carrier NAT's.
    pub public: Ipv4Addr,
    pub lan_gw: Ipv4Addr,
    pub lan_base: Ipv4Addr,
    pub udp_timeout: Option<u32>,
    /// `Some(natpmp)`: it runs miniupnpd ([`Topology::upnp_router`]).
    pub upnp: Option<bool>,
    lan_ports: u8,
    /// A carrier NAT: whether it hairpins, and the home routers attached.
    carrier: Option<bool>,
    subscribers: u8,
}

impl RouterHandle {
    fn next_lan_addr(&self) -> anyhow::Result<Ipv4Addr> {
        let host = FIRST_LAN_HOST + self.lan_ports;
        ensure!(host < ROAM_LAN_HOST, "LAN of {} is full", self.name);
        let [a, b, c, d] = self.lan_base.octets();
        Ok(Ipv4Addr::new(a, b, c, d + host))
    }

    /// The address a node that moves onto this LAN takes (never one of
    /// the LAN's own nodes'), and the same with the LAN's prefix length.
    pub fn roam_addr(&self) -> (Ipv4Addr, String) {
        let [a, b, c, d] = self.lan_base.octets();
        let addr = Ipv4Addr::new(a, b, c, d + ROAM_LAN_HOST);
        (addr, format!("{addr}/{LAN_PREFIX}"))
    }

    /// The LAN as a CIDR.
    pub fn lan(&self) -> String {
        format!("{}/{LAN_PREFIX}", self.lan_base)
    }
}

/// The second TRS (`cloud run --role trs` on a copy of the cloud's folder).
pub struct Trs2 {
    pub ns: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub pid: Option<u32>,
}

/// The NAT lab: an [`Overlay`] (cloud, nodes) plus where everything sits.
pub struct NatLab {
    pub o: Overlay,
    /// Parallel to `o.nodes`.
    pub nodes: Vec<NatNode>,
    pub routers: Vec<RouterHandle>,
    pub trs2: Option<Trs2>,
    /// Every relay address handed to nodes (`trs_public`), best first.
    pub relays: Vec<SocketAddr>,
    /// Whether this `cyphonic` has `node run --keepalive` (nodes get
    /// `--keepalive 1` when it does).
    pub keepalive_flag: bool,
}

impl NatLab {
    /// The index of node `name`.
    pub fn node(&self, name: &str) -> anyhow::Result<usize> {
        self.o
            .nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("no node {name} in this lab"))
    }

    pub fn router(&self, name: &str) -> anyhow::Result<&RouterHandle> {
        self.routers
            .iter()
            .find(|r| r.name == name)
            .with_context(|| format!("no router {name} in this lab"))
    }

    /// The router node `i` sits behind.
    pub fn router_of(&self, i: usize) -> Option<&RouterHandle> {
        self.nodes[i].router.map(|r| &self.routers[r])
    }

    /// Starts the cloud (and the second TRS), enrolls every node in
    /// parallel, starts every daemon, and waits for the registrations.
    /// Returns, per node, whether it registered (an `Err` says why not):
    /// a node that does not register fails its own checks, not the set-up.
    pub fn start(&mut self) -> anyhow::Result<Vec<anyhow::Result<()>>> {
        self.o.start_cloud()?;
        if let Some(t) = &self.trs2 {
            let bin = self.o.bin();
            let config = t.config.to_string_lossy().to_string();
            let ns = t.ns.clone();
            let pid = self.o.lab.spawn(
                &ns,
                &[&bin, "cloud", "run", "--config", &config, "--role", "trs"],
                "trs2",
                &[],
            )?;
            if let Some(t) = self.trs2.as_mut() {
                t.pid = Some(pid);
            }
        }
        let o = &self.o;
        let enrolled: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..o.nodes.len())
                .map(|i| s.spawn(move || o.enroll(i)))
                .collect();
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("enroll thread panicked")))
                })
                .collect()
        });
        let mut results = Vec::new();
        for (i, r) in enrolled.into_iter().enumerate() {
            match r {
                Ok(()) => {
                    self.o.start_node(i)?;
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e.context("enrolling"))),
            }
        }
        for (i, r) in results.iter_mut().enumerate() {
            if r.is_ok() {
                if let Err(e) = self.o.wait_registered(i, Duration::from_secs(20)) {
                    *r = Err(e);
                }
            }
        }
        Ok(results)
    }

    /// Whether the second TRS is still running (`Err` with its log if not).
    pub fn trs2_running(&mut self) -> anyhow::Result<()> {
        let pid = self
            .trs2
            .as_ref()
            .and_then(|t| t.pid)
            .context("no second TRS in this lab")?;
        if let Some(status) = self.o.lab.try_wait(pid)? {
            bail!(
                "the second TRS exited ({status}): {}",
                self.o.lab.log("trs2")
            );
        }
        Ok(())
    }
}

/// Links `ns`'s `ifname` to a new port of the internet bridge.
fn attach(
    lab: &mut Lab,
    ports: &mut u32,
    ns: &str,
    ifname: &str,
    addrs: &[&str],
) -> anyhow::Result<()> {
    *ports += 1;
    let port = format!("p{ports}");
    lab.link(ns, ifname, addrs, INTERNET, &port, &[])?;
    lab.sh(INTERNET, &format!("ip link set {port} master br0"))?;
    Ok(())
}

fn build_router(
    lab: &mut Lab,
    ports: &mut u32,
    i: usize,
    r: &RouterSpec,
    built: &mut [RouterHandle],
) -> anyhow::Result<RouterHandle> {
    let ns = lab.add_ns(&r.name)?;
    let mut wan = Ipv4Addr::new(192, 0, 2, FIRST_WAN_HOST + i as u8);
    let mut public = wan;
    let lan_base = LANS[i];
    let [a, b, c, d] = lan_base.octets();
    let lan_gw = Ipv4Addr::new(a, b, c, d + 1);
    if let Some(cname) = &r.behind {
        let carrier = built
            .iter_mut()
            .find(|h| &h.name == cname)
            .with_context(|| format!("router {}: no carrier {cname} declared before it", r.name))?;
        ensure!(carrier.carrier.is_some(), "{cname} is not a carrier NAT");
        wan = carrier.next_lan_addr()?;
        public = carrier.public;
        carrier.lan_ports += 1;
        let port = format!("l{}", carrier.lan_ports);
        let (c_ns, c_gw) = (carrier.ns.clone(), carrier.lan_gw);
        lab.link(
            &c_ns,
            &port,
            &[],
            &r.name,
            "wan",
            &[&format!("{wan}/{LAN_PREFIX}")],
        )?;
        lab.sh(&c_ns, &format!("ip link set {port} master lan"))?;
        lab.route(&r.name, "default", &c_gw.to_string())?;
        carrier_subscriber(lab, carrier, wan)?;
    } else if r.isp_hop {
        let isp = format!("isp-{}", r.name);
        lab.add_ns(&isp)?;
        let isp_addr = Ipv4Addr::new(192, 0, 2, FIRST_ISP_HOST + i as u8);
        attach(lab, ports, &isp, "ext", &[&format!("{isp_addr}/24")])?;
        lab.link(
            &isp,
            "cust",
            &[&format!("{isp_addr}/32")],
            &r.name,
            "wan",
            &[&format!("{wan}/24")],
        )?;
        lab.router(&isp)?;
        lab.sysctl(
            &isp,
            &[
                ("net.ipv4.conf.ext.proxy_arp", "1"),
                ("net.ipv4.conf.cust.proxy_arp", "1"),
                // Proxied ARP answers wait a random while by default (up
                // to 0.8 s), which an ISP's routed link does not.
                ("net.ipv4.neigh.ext.proxy_delay", "0"),
                ("net.ipv4.neigh.cust.proxy_delay", "0"),
                ("net.ipv6.conf.ext.disable_ipv6", "1"),
                ("net.ipv6.conf.cust.disable_ipv6", "1"),
            ],
        )?;
        lab.sh(&isp, &format!("ip route add {wan}/32 dev cust"))?;
        if let Some(mtu) = r.uplink_mtu {
            lab.sh(&isp, &format!("ip link set cust mtu {mtu}"))?;
            lab.sh(&r.name, &format!("ip link set wan mtu {mtu}"))?;
        }
        if r.icmp_filtered {
            for router in [&isp, &r.name] {
                lab.sh(
                    router,
                    "nft add table inet silent && \
                     nft add chain inet silent leaving '{ type filter hook output priority 0 ; }' && \
                     nft add chain inet silent passing '{ type filter hook forward priority 0 ; }' && \
                     nft add rule inet silent leaving icmp type destination-unreachable icmp code 4 drop && \
                     nft add rule inet silent passing icmp type destination-unreachable icmp code 4 drop && \
                     nft add rule inet silent leaving icmpv6 type packet-too-big drop && \
                     nft add rule inet silent passing icmpv6 type packet-too-big drop",
                )?;
            }
        }
    } else {
        attach(lab, ports, &r.name, "wan", &[&format!("{wan}/24")])?;
    }
    lab.sh(
        &ns,
        &format!(
            "ip link add lan type bridge && ip addr add {lan_gw}/{LAN_PREFIX} dev lan && ip link set lan up"
        ),
    )?;
    // IPv4 only: a NAT44 router, as the private LANs are IPv4 only.
    lab.sysctl(
        &ns,
        &[
            ("net.ipv6.conf.wan.disable_ipv6", "1"),
            ("net.ipv6.conf.lan.disable_ipv6", "1"),
        ],
    )?;
    lab.router(&ns)?;
    // The NAT, and the input firewall every home router has: nothing from
    // the WAN reaches the router's own stack unsolicited. Besides realism,
    // it matters for hole punching: without it, a peer's punch that
    // arrives before the node behind this router has sent anything leaves
    // a conntrack entry (peer -> WAN address, to the router itself) whose
    // reply tuple is the mapping the node's own packets to that peer would
    // get, so masquerade then picks another port for them and the punch
    // fails. Dropped in the filter hook, the packet never confirms its
    // conntrack entry.
    lab.sh(
        &ns,
        &format!(
            "nft add table ip nat && \
             nft add chain ip nat post '{{ type nat hook postrouting priority 100 ; }}' && \
             nft add chain ip nat pre '{{ type nat hook prerouting priority -100 ; }}' && \
             nft add rule ip nat post oifname wan {}",
            r.kind.masquerade()
        ),
    )?;
    if r.input_firewall {
        lab.sh(
            &ns,
            "nft add table inet fw && \
             nft add chain inet fw input '{ type filter hook input priority 0 ; }' && \
             nft add rule inet fw input iifname wan ct state new,invalid drop",
        )?;
    }
    if r.upnp.is_some() {
        lab.sh(&ns, &format!("nft -f - <<'EOF'\n{MINIUPNPD_NFT}\nEOF"))?;
    }
    if let Some(secs) = r.udp_timeout {
        let secs = secs.to_string();
        lab.sysctl(
            &ns,
            &[
                ("net.netfilter.nf_conntrack_udp_timeout", &secs),
                ("net.netfilter.nf_conntrack_udp_timeout_stream", &secs),
            ],
        )?;
    }
    Ok(RouterHandle {
        name: r.name.clone(),
        ns,
        kind: r.kind,
        wan,
        public,
        lan_gw,
        lan_base,
        udp_timeout: r.udp_timeout,
        upnp: r.upnp,
        lan_ports: 0,
        carrier: r.carrier,
        subscribers: 0,
    })
}

/// Starts the STUN server in namespace `stun` on the internet's link,
/// on [`STUN_V4`] x [`STUN_PORTS`], and waits until it listens.
fn start_stun(lab: &mut Lab, ports: &mut u32) -> anyhow::Result<()> {
    lab.add_ns("stun")?;
    let cidrs: Vec<String> = STUN_V4.iter().map(|a| format!("{a}/24")).collect();
    let cidrs: Vec<&str> = cidrs.iter().map(String::as_str).collect();
    attach(lab, ports, "stun", "eth0", &cidrs)?;
    let script = lab.dir().join("stun_server.py");
    std::fs::write(&script, STUN_SERVER)
        .with_context(|| format!("writing {}", script.display()))?;
    let script = script.to_string_lossy().to_string();
    let (a, b) = (STUN_V4[0].to_string(), STUN_V4[1].to_string());
    let (p, q) = (STUN_PORTS[0].to_string(), STUN_PORTS[1].to_string());
    let pid = lab.spawn(
        "stun",
        &["python3", "-u", &script, &a, &b, &p, &q],
        "stun",
        &[],
    )?;
    wait_until("the STUN server", UPNP_READY_TIMEOUT, || {
        if let Some(status) = lab.try_wait(pid)? {
            return Ok(Some(Err(anyhow!(
                "the STUN server exited ({status}): {}",
                lab.log("stun")
            ))));
        }
        Ok(lab
            .log("stun")
            .lines()
            .any(|l| l == "ready")
            .then_some(Ok(())))
    })?
}

/// The name of router `router`'s miniupnpd log in the lab's directory.
pub fn miniupnpd_log(router: &str) -> String {
    format!("miniupnpd-{router}")
}

/// Writes miniupnpd's configuration for router `r` into the lab's
/// directory and starts it in the router's namespace, in the foreground
/// with debug logs (log [`miniupnpd_log`]). Returns its pid.
fn start_miniupnpd(lab: &mut Lab, r: &RouterHandle) -> anyhow::Result<u32> {
    let natpmp = r.upnp == Some(true);
    let conf = lab.dir().join(format!("miniupnpd-{}.conf", r.name));
    std::fs::write(
        &conf,
        format!(
            "# miniupnpd of router {name}\n\
             ext_ifname=wan\n\
             listening_ip=lan\n\
             http_port={UPNP_HTTP_PORT}\n\
             enable_natpmp={natpmp}\n\
             enable_upnp=yes\n\
             secure_mode=yes\n\
             uuid={uuid}\n\
             ext_perform_stun=yes\n\
             ext_stun_host={stun}\n\
             ext_stun_port={stun_port}\n\
             allow 1024-65535 {lan} 1024-65535\n\
             deny 0-65535 0.0.0.0/0 0-65535\n",
            name = r.name,
            natpmp = if natpmp { "yes" } else { "no" },
            uuid = upnp_uuid(r.wan),
            stun = STUN_V4[0],
            stun_port = STUN_PORTS[0],
            lan = r.lan(),
        ),
    )
    .with_context(|| format!("writing {}", conf.display()))?;
    let conf = conf.to_string_lossy().to_string();
    let pid_file = lab.dir().join(format!("miniupnpd-{}.pid", r.name));
    let pid_file = pid_file.to_string_lossy().to_string();
    let ns = r.ns.clone();
    lab.spawn(
        &ns,
        &["miniupnpd", "-f", &conf, "-d", "-P", &pid_file],
        &miniupnpd_log(&r.name),
        &[],
    )
}

/// Waits until router `r`'s miniupnpd (`pid`) has enabled port forwarding
/// and listens: HTTP, SSDP, and PCP/NAT-PMP when it speaks them. Fails
/// with its log when it exits, disables forwarding or takes too long.
fn wait_miniupnpd(lab: &mut Lab, r: &RouterHandle, pid: u32) -> anyhow::Result<()> {
    let log = miniupnpd_log(&r.name);
    let mut wanted = vec![("tcp", UPNP_HTTP_PORT), ("udp", 1900)];
    if r.upnp == Some(true) {
        wanted.push(("udp", 5351));
    }
    let ready = wait_until(
        &format!("miniupnpd on {} to enable port forwarding", r.name),
        UPNP_READY_TIMEOUT,
        || {
            let text = lab.log(&log);
            if let Some(status) = lab.try_wait(pid)? {
                return Ok(Some(Err(anyhow!("miniupnpd exited ({status})"))));
            }
            if text.contains("Port forwarding is now disabled") {
                return Ok(Some(Err(anyhow!("miniupnpd disabled port forwarding"))));
            }
            if !text.contains(FORWARDING_ENABLED) {
                return Ok(None);
            }
            let out = lab.exec(&r.ns, &["ss", "-Hltun"])?;
            let listening: Vec<(String, u16)> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let port = f.get(4)?.rsplit(':').next()?.parse().ok()?;
                    Some((f[0].to_owned(), port))
                })
                .collect();
            Ok(wanted
                .iter()
                .all(|&(proto, port)| listening.iter().any(|(p, n)| p == proto && *n == port))
                .then_some(Ok(())))
        },
    );
    ready.and_then(|done| done).with_context(|| {
        let text = lab.log(&log);
        let hint = if text.contains("exec of \"miniupnpd\" failed") {
            " (miniupnpd comes with the Debian package miniupnpd-nftables: scripts/deps.sh)"
        } else {
            ""
        };
        format!(
            "miniupnpd on router {}{hint}; its log:\n{}",
            r.name,
            text.trim_end()
        )
    })
}

/// A UUID for router `wan`'s UPnP device, the same in every run.
fn upnp_uuid(wan: Ipv4Addr) -> String {
    format!("5e1f0c3a-7d2b-4c8e-9a61-{:012x}", u32::from(wan))
}

/// A home router at `wan` joined `carrier`'s network: its deterministic
/// mappings of [`CARRIER_PORTS`] and, on a hairpinning carrier, the way
/// back in for the other subscribers.
fn carrier_subscriber(lab: &Lab, carrier: &mut RouterHandle, wan: Ipv4Addr) -> anyhow::Result<()> {
    let j = u16::from(carrier.subscribers);
    carrier.subscribers += 1;
    let public = carrier.public;
    let mut rules = Vec::new();
    for port in CARRIER_PORTS {
        let mapped = 10_000 * (j + 1) + port % 10_000;
        rules.push(format!(
            "nft insert rule ip nat post oifname wan ip saddr {wan} udp sport {port} snat to {public}:{mapped}"
        ));
        if carrier.carrier == Some(true) {
            rules.push(format!(
                "nft add rule ip nat pre iifname lan ip daddr {public} udp dport {mapped} dnat to {wan}:{port}"
            ));
            rules.push(format!(
                "nft insert rule ip nat post oifname lan ct status dnat ip saddr {wan} udp sport {port} snat to {public}:{mapped}"
            ));
        }
    }
    lab.sh(&carrier.ns, &rules.join(" && "))?;
    Ok(())
}

/// 2001:db8::11 for host 11: the IPv6 address reads like the IPv4 one.
fn host_v6(host: u8) -> u16 {
    u16::from_str_radix(&host.to_string(), 16).unwrap_or(host as u16)
}

/// A TOML array of socket addresses.
fn toml_addrs(addrs: &[SocketAddr]) -> String {
    let items: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// Copies a folder and everything in it.
pub(crate) fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Whether `cyphonic node run` takes `--keepalive`.
fn node_supports_keepalive(lab: &Lab, bin: &Path) -> bool {
    let bin = bin.to_string_lossy();
    lab.exec("cloud", &[&bin, "node", "run", "--help"])
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("--keepalive"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_read_like_ipv4_ones() {
        assert_eq!(host_v6(11), 0x11);
        assert_eq!(host_v6(19), 0x19);
        assert_eq!(
            toml_addrs(&[(CLOUD_V4, 4503).into(), (CLOUD_V6, 4503).into()]),
            r#"["192.0.2.1:4503", "[2001:db8::1]:4503"]"#
        );
    }
}
