//! The adapter's LAN side against clients nobody here wrote: `dhclient -4`,
//! `dhcpcd`, `rdisc6` and `dhclient -6` in general-node namespaces on a
//! bridged LAN get their VIPs, the RA and the proxy's answers; a device
//! with an unknown MAC gets nothing. Needs root (namespaces) and the
//! clients (`scripts/deps.sh`); skipped otherwise.
#![cfg(target_os = "linux")]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cyphonic_adapter::lan::{GeneralNodeAddrs, Lan, LanConfig};
use cyphonic_adapter::MacAddr;
use cyphonic_lab::netns::Lab;

const GATEWAY4: &str = "100.64.0.2";
const GATEWAY6: &str = "fd7a:6379:7068::2";

fn gn(i: u8) -> GeneralNodeAddrs {
    GeneralNodeAddrs {
        mac: MacAddr([2, 0, 0x5e, 0x10, 0, i]),
        vip4: format!("100.64.1.{i}").parse().expect("vip4"),
        vip6: format!("fd7a:6379:7068::1:{i}").parse().expect("vip6"),
        name: format!("gn{i}"),
    }
}

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `lab.sh(ns, cmd)` and returns stdout, asserting success.
fn sh(lab: &Lab, ns: &str, cmd: &str) -> String {
    let out = match lab.sh(ns, cmd) {
        Ok(out) => out,
        Err(e) => panic!("{e:#}"),
    };
    assert!(
        out.status.success(),
        "`{cmd}` in {ns}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `cmd`'s stdout in `ns` until `done` holds, with a deadline.
fn wait_for(
    lab: &Lab,
    ns: &str,
    cmd: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let out = lab.sh(ns, cmd).expect("run");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn general_nodes_get_their_vips_from_real_clients_and_strangers_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    for tool in ["dhclient", "dhcpcd", "rdisc6"] {
        if !have(tool) {
            eprintln!("skipped: {tool} is not installed (scripts/deps.sh installs it)");
            return;
        }
    }
    let mut lab = Lab::new("adapter-lan").expect("lab");
    for ns in ["adapter", "lan", "gn1", "gn2", "stranger"] {
        lab.add_ns(ns).expect("namespace");
    }
    // One LAN: a bridge in `lan`, the adapter and three hosts on it.
    lab.link("adapter", "cyl0", &[], "lan", "l0", &[])
        .expect("link");
    for (i, host) in ["gn1", "gn2", "stranger"].iter().enumerate() {
        lab.link(host, "eth0", &[], "lan", &format!("l{}", i + 1), &[])
            .expect("link");
    }
    sh(&lab, "lan", "ip link add br0 type bridge mcast_snooping 0 && ip link set br0 up && for p in l0 l1 l2 l3; do ip link set $p master br0; done");
    sh(&lab, "gn1", "ip link set eth0 down && ip link set eth0 address 02:00:5e:10:00:01 && ip link set eth0 up");
    sh(&lab, "gn2", "ip link set eth0 down && ip link set eth0 address 02:00:5e:10:00:02 && ip link set eth0 up");
    sh(&lab, "stranger", "ip link set eth0 down && ip link set eth0 address 02:00:5e:10:00:66 && ip link set eth0 up");
    // The adapter's LAN interface has no IP stack of its own.
    sh(
        &lab,
        "adapter",
        "sysctl -qw net.ipv6.conf.cyl0.disable_ipv6=1",
    );

    let adapter_ns = lab
        .namespaces()
        .iter()
        .find(|n| n.ends_with("-adapter"))
        .expect("adapter namespace")
        .clone();
    let lease_file = lab.dir().join("leases.json");
    let stop = Arc::new(AtomicBool::new(false));
    let service = {
        let stop = stop.clone();
        let lease_file = lease_file.clone();
        std::thread::spawn(move || {
            let file = File::open(format!("/run/netns/{adapter_ns}")).expect("netns file");
            // SAFETY: a valid namespace fd; setns only affects this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            let mut config = LanConfig {
                iface: "cyl0".into(),
                gateway4: GATEWAY4.parse().expect("gateway4"),
                gateway6: GATEWAY6.parse().expect("gateway6"),
                overlay4: "100.64.0.0/10".parse().expect("prefix"),
                overlay6: "fd7a:6379:7068::/48".parse().expect("prefix"),
                domain: "cyphonic.internal".into(),
                lease_file: Some(lease_file),
                mtu: Some(1408),
            };
            let mut lan = Lan::open(&config, &[gn(1), gn(2)]).expect("open the LAN");
            let mut overlay = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Some(input) = lan.turn(Duration::from_millis(100)).expect("turn") {
                    overlay.push(input);
                }
            }
            let (lan_counters, mac) = (lan.counters(), lan.mac());
            let leases = lan.leases();
            drop(lan);
            // A restarted LAN side holds the same leases.
            let mut again = Lan::open(&config, &[gn(1), gn(2)]).expect("reopen the LAN");
            let restored = again.leases();
            // Its lease holders count as on the LAN at once, quiet or not.
            let arrived: Vec<_> = std::iter::from_fn(|| again.poll_arrival()).collect();
            config.lease_file = None;
            (lan_counters, mac, overlay, leases, (restored, arrived))
        })
    };
    let dir = lab.dir().to_path_buf();
    let d = |n: &str| dir.join(n).display().to_string();

    // gn1: dhclient -4 gets the VIPv4, the overlay's mask and the gateway.
    sh(
        &lab,
        "gn1",
        &format!(
            "timeout 30 dhclient -4 -1 -pf {} -lf {} eth0",
            d("gn1-4.pid"),
            d("gn1-4.leases")
        ),
    );
    let addr = sh(&lab, "gn1", "ip -4 -o addr show dev eth0");
    assert!(addr.contains("inet 100.64.1.1/10"), "{addr}");
    let route = sh(&lab, "gn1", "ip -4 route show default");
    assert!(route.contains(&format!("via {GATEWAY4}")), "{route}");

    // gn2: dhcpcd, IPv4 only, gets its own VIPv4.
    sh(&lab, "gn2", &format!(
        // Its own run and lease directories: other tests' dhcpcd (other
        // namespaces, same file system) must not answer for it.
        "mkdir -p /run/dhcpcd /var/lib/dhcpcd && mount -t tmpfs tmpfs /run/dhcpcd && mount -t tmpfs tmpfs /var/lib/dhcpcd && timeout 30 dhcpcd -4 --oneshot --noipv4ll --nohook resolv.conf -t 20 -f /dev/null --logfile {} eth0",
        d("gn2-dhcpcd.log")
    ));
    let addr = wait_for(
        &lab,
        "gn2",
        "ip -4 -o addr show dev eth0",
        Duration::from_secs(10),
        |t| t.contains("100.64.1.2"),
    );
    assert!(addr.contains("inet 100.64.1.2/10"), "{addr}");

    // gn1: the RA says stateful (M) and other configuration (O), with the
    // adapter's VIPv6 as the DNS server.
    let ra = sh(&lab, "gn1", "rdisc6 -1 -w 3000 eth0");
    assert!(
        ra.contains("Stateful address conf.") && ra.contains("Yes"),
        "{ra}"
    );
    let managed = ra
        .lines()
        .find(|l| l.contains("Stateful address conf."))
        .unwrap_or("");
    assert!(managed.contains("Yes"), "{ra}");
    assert!(ra.contains(GATEWAY6), "RDNSS: {ra}");

    // gn1: dhclient -6 (stateful) gets the VIPv6. Its Solicit leaves a
    // local stack whose UDP checksum the veth leaves to "offload": the
    // socket says so and the classifier takes it as it is.
    sh(
        &lab,
        "gn1",
        &format!(
            "timeout 30 dhclient -6 -1 -pf {} -lf {} eth0",
            d("gn1-6.pid"),
            d("gn1-6.leases")
        ),
    );
    let addr6 = sh(&lab, "gn1", "ip -6 -o addr show dev eth0 scope global");
    assert!(addr6.contains("fd7a:6379:7068::1:1"), "{addr6}");

    // The proxy answers for peers: gn1's neighbour entries for a peer VIP
    // name the adapter's MAC (IPv4 by ARP, IPv6 by ND).
    let _ = lab.sh("gn1", "ping -c1 -W1 100.64.0.9");
    let _ = lab.sh("gn1", "ping -6 -c1 -W1 fd7a:6379:7068::9");
    let neigh4 = sh(&lab, "gn1", "ip neigh show 100.64.0.9 dev eth0");
    let neigh6 = sh(&lab, "gn1", "ip -6 neigh show fd7a:6379:7068::9 dev eth0");

    // A device the operator did not add gets nothing.
    // (`Lab::sh` reports a failing command as an error.)
    let stranger = lab.sh(
        "stranger",
        &format!(
            "timeout 8 dhclient -4 -1 -pf {} -lf {} eth0",
            d("s.pid"),
            d("s.leases")
        ),
    );
    assert!(
        stranger.as_ref().map_or(true, |o| !o.status.success()),
        "the stranger's dhclient gave up"
    );
    let none = sh(&lab, "stranger", "ip -4 -o addr show dev eth0");
    assert!(!none.contains("inet "), "{none}");

    // Stop the clients before the service (dhclient -1 exits once bound,
    // its -pf files say whom to stop otherwise).
    let _ = lab.sh(
        "gn1",
        &format!(
            "dhclient -x -pf {} eth0; dhclient -6 -x -pf {} eth0",
            d("gn1-4.pid"),
            d("gn1-6.pid")
        ),
    );
    stop.store(true, Ordering::SeqCst);
    let (counters, mac, overlay, leases, (restored, arrived)) = service.join().expect("service");
    let macs4: Vec<MacAddr> = leases.dhcp4.iter().map(|l| l.mac).collect();
    assert_eq!(
        macs4,
        vec![gn(1).mac, gn(2).mac],
        "gn1 (dhclient) and gn2 (dhcpcd)"
    );
    assert!(leases
        .dhcp6
        .iter()
        .any(|l| l.mac == gn(1).mac && l.address == gn(1).vip6));
    assert_eq!(restored.dhcp4, leases.dhcp4, "the leases outlive a restart");
    assert_eq!(restored.dhcp6.len(), leases.dhcp6.len());
    for lease in &restored.dhcp4 {
        assert!(
            arrived.contains(&lease.mac),
            "{} holds a lease but did not arrive after the restart: {arrived:?}",
            lease.mac
        );
    }
    let file: cyphonic_adapter::lan::Leases =
        serde_json::from_slice(&std::fs::read(&lease_file).expect("lease file")).expect("leases");
    assert_eq!(
        file.dhcp4, leases.dhcp4,
        "the file holds what the server holds"
    );
    assert!(
        neigh4.contains(&mac.to_string()),
        "{neigh4} (adapter {mac})"
    );
    assert!(
        neigh6.contains(&mac.to_string()),
        "{neigh6} (adapter {mac})"
    );
    assert!(counters.dhcp4_replies >= 4, "{counters:?}");
    assert!(counters.dhcp6_replies >= 2, "{counters:?}");
    assert!(counters.router_advertisements >= 1, "{counters:?}");
    assert!(counters.proxy_answers >= 2, "{counters:?}");
    // The pings to peers were handed to the overlay side.
    assert!(!overlay.is_empty(), "{counters:?}");
    lab.cleanup().expect("cleanup");
}
