//! Linux TUN device on tun-rs.
//!
//! The descriptor is non-blocking. A read that has to wait polls it together
//! with an interrupt pipe (tun-rs `interruptible`), so [`Tun::shutdown`] can
//! wake a reader blocked in [`Tun::recv`] or [`Tun::recv_batch`] from another
//! thread; [`Tun::recv_batch`] reads queued packets without polling, and
//! [`Tun::send_batch`] writes without polling (a TUN write never waits).
//!
//! With offload on, every frame on the descriptor starts with a virtio-net
//! header. The batch calls handle it through tun-rs (`recv_multiple` splits a
//! GSO segment, `send_multiple` coalesces through its GRO table); the
//! single-packet calls write a plain header and keep the rest of a split
//! segment queued for the next [`Tun::recv`].

use std::io::{self, IoSlice};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tun_rs::{DeviceBuilder, GROTable, InterruptEvent, SyncDevice, VIRTIO_NET_HDR_LEN};

use super::{TunConfig, IDEAL_BATCH_SIZE, RECV_SCRATCH_LEN};

const TUN_PATH: &str = "/dev/net/tun";
/// Linux disables IPv6 on an interface whose MTU is below the IPv6 minimum
/// link MTU (RFC 8200 section 5), and the device must carry the VIPv6.
const MIN_MTU: u16 = 1280;
/// `IFNAMSIZ` is 16 including the terminating NUL.
const MAX_NAME_LEN: usize = 15;

/// The node's TUN device. `Send + Sync`: share it through an `Arc` between
/// one reader thread (`recv`/`recv_batch`) and one writer thread
/// (`send`/`send_batch`). The device disappears when the `Tun` is dropped.
///
/// After [`Tun::shutdown`] every IO call fails with
/// [`io::ErrorKind::ConnectionAborted`].
pub struct Tun {
    dev: SyncDevice,
    name: String,
    mtu: u16,
    offload: bool,
    interrupt: InterruptEvent,
    shut_down: AtomicBool,
    /// Coalescing state for `send_batch`; only the writer thread takes it.
    gro: Mutex<GROTable>,
    /// Packets split from a GSO segment that `recv` has not handed out yet;
    /// only used with offload, only the reader thread takes it.
    pending: Mutex<Option<Pending>>,
}

impl Tun {
    /// Creates the device (`IFF_NO_PI`; plus `IFF_VNET_HDR` and
    /// `TUNSETOFFLOAD` TSO4/TSO6/USO4/USO6 when `cfg.offload`), assigns
    /// `vip4/prefix4` and `vip6/prefix6` so the kernel installs on-link
    /// routes for both overlay prefixes, sets the MTU and brings it up.
    ///
    /// Fails with a message naming the cause when `/dev/net/tun` is missing
    /// or the process lacks `CAP_NET_ADMIN`.
    pub fn create(cfg: &TunConfig) -> io::Result<Tun> {
        validate(cfg)?;
        let dev = DeviceBuilder::new()
            .name(cfg.name.clone())
            .mtu(cfg.mtu)
            .ipv4(cfg.vip4, cfg.prefix4, None)
            .ipv6(cfg.vip6, cfg.prefix6)
            .offload(cfg.offload)
            .enable(true)
            .build_sync()
            .map_err(|e| explain_create_error(&cfg.name, e))?;
        dev.set_nonblocking(true)?;
        let name = dev.name().unwrap_or_else(|_| cfg.name.clone());
        let offload = dev.tcp_gso();
        tracing::debug!(
            tun = %name,
            mtu = cfg.mtu,
            vip4 = %cfg.vip4,
            vip6 = %cfg.vip6,
            offload,
            udp_offload = dev.udp_gso(),
            "TUN device created"
        );
        Ok(Tun {
            dev,
            name,
            mtu: cfg.mtu,
            offload,
            interrupt: InterruptEvent::new()?,
            shut_down: AtomicBool::new(false),
            gro: Mutex::new(GROTable::new()),
            pending: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Whether the device runs with virtio-net headers and segmentation
    /// offload (what [`TunConfig::offload`] asked for, if the kernel agreed).
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Whether the kernel also accepted UDP segmentation offload (USO,
    /// Linux 6.2+), so `send_batch` coalesces UDP flows too.
    pub fn udp_offload(&self) -> bool {
        self.dev.udp_gso()
    }

    /// Blocks until one IP packet arrives from the kernel and copies it into
    /// `buf` (truncated if `buf` is shorter, like a datagram read).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.offload {
            return self.retry(|| self.dev.recv_intr(buf, &self.interrupt));
        }
        let mut pending = lock(&self.pending);
        let pending = pending.get_or_insert_with(|| Pending::new(self.mtu));
        if pending.next == pending.count {
            let Pending {
                scratch,
                bufs,
                sizes,
                ..
            } = pending;
            let count = self.retry(|| {
                self.dev
                    .recv_multiple_intr(scratch, bufs, sizes, 0, &self.interrupt)
            })?;
            pending.next = 0;
            pending.count = count;
        }
        let packet = &pending.bufs[pending.next][..pending.sizes[pending.next]];
        pending.next += 1;
        let n = packet.len().min(buf.len());
        buf[..n].copy_from_slice(&packet[..n]);
        Ok(n)
    }

    /// Writes one IP packet to the kernel.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        if !self.offload {
            return self.retry(|| self.dev.send_intr(packet, &self.interrupt));
        }
        // An all-zero virtio-net header: no GSO, checksums already complete.
        let hdr = [0u8; VIRTIO_NET_HDR_LEN];
        let n = self.retry(|| {
            self.dev
                .send_vectored_intr(&[IoSlice::new(&hdr), IoSlice::new(packet)], &self.interrupt)
        })?;
        Ok(n.saturating_sub(VIRTIO_NET_HDR_LEN))
    }

    /// Reads what the kernel holds, without waiting, into
    /// `bufs[i][offset..offset + sizes[i]]`, returning how many packets;
    /// [`io::ErrorKind::WouldBlock`] when it holds none.
    ///
    /// With offload, one read may be a GSO segment of up to 64 KB, split here
    /// into MTU-sized packets, so `scratch` must hold [`RECV_SCRATCH_LEN`]
    /// bytes and `bufs` should have [`IDEAL_BATCH_SIZE`] entries of at least
    /// `offset + mtu` bytes. Without offload one call reads one packet into
    /// `bufs[0]` and `scratch` is unused. `offset` leaves headroom in front
    /// of each packet (our data header) so encryption can work in place.
    ///
    /// [`RECV_SCRATCH_LEN`]: super::RECV_SCRATCH_LEN
    pub fn try_recv_batch(
        &self,
        scratch: &mut [u8],
        bufs: &mut [Vec<u8>],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        super::check_batch(bufs, sizes)?;
        let sizes = &mut sizes[..bufs.len()];
        self.check_open()?;
        loop {
            match self.dev.recv_multiple(scratch, bufs, sizes, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Waits until the kernel holds a packet to read, or [`Tun::shutdown`].
    pub fn wait_readable(&self) -> io::Result<()> {
        self.check_open()?;
        self.retry(|| self.dev.wait_readable_intr(&self.interrupt))
    }

    /// [`Tun::wait_readable`] for at most `timeout`: `Ok(false)` when it
    /// passed with nothing to read.
    pub fn wait_readable_for(&self, timeout: std::time::Duration) -> io::Result<bool> {
        self.check_open()?;
        match self.retry(|| {
            self.dev
                .wait_readable_intr_timeout(&self.interrupt, Some(timeout))
        }) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The device's descriptor, for a thread that waits on it beside
    /// others (readable when the kernel holds a packet).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.dev.as_raw_fd()
    }

    /// Writes each `bufs[i][offset..]` (one whole IP packet) to the kernel.
    ///
    /// With offload, TCP and UDP packets of the same flow are first coalesced
    /// into large segments (tun-rs GRO table), which mutates `bufs`: the
    /// virtio-net header is written into the headroom and a segment's first
    /// buffer grows by the payload of the packets merged into it. A buffer
    /// only absorbs packets within its spare capacity (tun-rs never
    /// reallocates): give pooled buffers a capacity of about
    /// `2 * offset + 65535` or nothing coalesces. `offset` must be at least
    /// [`MIN_SEND_OFFSET`]. Every packet is attempted; the last error, if
    /// any, is returned.
    ///
    /// [`MIN_SEND_OFFSET`]: super::MIN_SEND_OFFSET
    pub fn send_batch(&self, bufs: &mut [Vec<u8>], offset: usize) -> io::Result<()> {
        if self.offload && offset < VIRTIO_NET_HDR_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "send_batch with offload needs offset >= {VIRTIO_NET_HDR_LEN}, got {offset}"
                ),
            ));
        }
        if bufs.iter().any(|b| b.len() <= offset) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "send_batch: a buffer holds no packet after its headroom",
            ));
        }
        self.check_open()?;
        // A TUN write hands the packet to the kernel's receive path and
        // does not wait for room (the device's socket has no send limit
        // to speak of), so it needs no poll first: one syscall per
        // (coalesced) packet.
        if let [one] = bufs {
            // A request or a reply: nothing to coalesce, so the packet
            // goes without the coalescing table (an all-zero virtio-net
            // header in the headroom: no GSO, checksums complete).
            let start = if self.offload {
                one[offset - VIRTIO_NET_HDR_LEN..offset].fill(0);
                offset - VIRTIO_NET_HDR_LEN
            } else {
                offset
            };
            return self.dev.send(&one[start..]).map(drop);
        }
        let mut gro = lock(&self.gro);
        self.dev.send_multiple(&mut gro, bufs, offset).map(drop)
    }

    /// Wakes threads blocked in any IO call on this device; from now on they
    /// all fail with [`io::ErrorKind::ConnectionAborted`].
    pub fn shutdown(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
        if let Err(e) = self.interrupt.trigger() {
            tracing::warn!(tun = %self.name, error = %e, "could not wake TUN readers");
        }
    }

    /// Runs an interruptible IO call, retrying when a signal (EINTR) rather
    /// than `shutdown` interrupted it.
    fn retry<T>(&self, mut io: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        loop {
            match io() {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if self.shut_down.load(Ordering::SeqCst) {
                        return Err(self.shutdown_error(e));
                    }
                }
                other => return other,
            }
        }
    }

    /// Fails once [`Tun::shutdown`] was called.
    fn check_open(&self) -> io::Result<()> {
        if self.shut_down.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("TUN device {} shut down", self.name),
            ));
        }
        Ok(())
    }

    fn shutdown_error(&self, e: io::Error) -> io::Error {
        if self.shut_down.load(Ordering::SeqCst) && e.kind() == io::ErrorKind::Interrupted {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("TUN device {} shut down", self.name),
            )
        } else {
            e
        }
    }
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("mtu", &self.mtu)
            .field("offload", &self.offload)
            .finish_non_exhaustive()
    }
}

/// The reader's queue of packets split from one GSO segment.
struct Pending {
    scratch: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    next: usize,
    count: usize,
}

impl Pending {
    fn new(mtu: u16) -> Pending {
        Pending {
            scratch: vec![0; RECV_SCRATCH_LEN],
            bufs: vec![vec![0; usize::from(mtu)]; IDEAL_BATCH_SIZE],
            sizes: vec![0; IDEAL_BATCH_SIZE],
            next: 0,
            count: 0,
        }
    }
}

/// A poisoned lock only means another thread panicked mid-IO; the state
/// (a coalescing table reset on every use, a packet queue) stays valid.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn validate(cfg: &TunConfig) -> io::Result<()> {
    let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    if cfg.name.is_empty() || cfg.name.len() > MAX_NAME_LEN || cfg.name.contains(['/', ' ']) {
        return invalid(format!(
            "TUN name {:?} must be 1 to {MAX_NAME_LEN} bytes without '/' or spaces",
            cfg.name
        ));
    }
    if cfg.mtu < MIN_MTU {
        return invalid(format!(
            "TUN MTU {} is below {MIN_MTU}, where Linux disables IPv6 on the device",
            cfg.mtu
        ));
    }
    if cfg.prefix4 > 32 || cfg.prefix6 > 128 {
        return invalid(format!(
            "invalid prefix length /{} or /{}",
            cfg.prefix4, cfg.prefix6
        ));
    }
    Ok(())
}

fn explain_create_error(name: &str, e: io::Error) -> io::Error {
    let hint = if !Path::new(TUN_PATH).exists() {
        format!("{TUN_PATH} is missing (load the tun module: modprobe tun)")
    } else if e.kind() == io::ErrorKind::PermissionDenied || !crate::is_root() {
        "creating a TUN device needs root (CAP_NET_ADMIN)".to_owned()
    } else {
        return io::Error::new(e.kind(), format!("creating TUN device {name}: {e}"));
    };
    io::Error::new(e.kind(), format!("creating TUN device {name}: {hint}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn tun_is_send_and_sync() {
        assert_send_sync::<Tun>();
    }

    fn config() -> TunConfig {
        TunConfig {
            name: "cy0".into(),
            mtu: 1420,
            vip4: "100.64.0.1".parse().unwrap(),
            prefix4: 10,
            vip6: "fd00:cafe::1".parse().unwrap(),
            prefix6: 64,
            offload: false,
        }
    }

    #[test]
    fn rejects_bad_configs_before_touching_the_kernel() {
        assert!(validate(&config()).is_ok());
        for bad in [
            TunConfig {
                name: "a-name-longer-than-15".into(),
                ..config()
            },
            TunConfig {
                name: String::new(),
                ..config()
            },
            TunConfig {
                mtu: 1200,
                ..config()
            },
            TunConfig {
                prefix4: 33,
                ..config()
            },
        ] {
            let err = validate(&bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
