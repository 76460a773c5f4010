//! The TUN device on Windows: a wintun adapter and its session (packet
//! rings shared with the driver). `wintun.dll` is loaded from beside the
//! executable. No offload: packets cross one at a time, batches are made
//! of what the ring already holds.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use wintun_bindings::{Adapter, Session};

use super::TunConfig;
use crate::ipconfig::{self, WinIpHelper};

pub struct Tun {
    name: String,
    mtu: u16,
    session: Arc<Session>,
    /// Kept so the adapter lives as long as the session.
    _adapter: Arc<Adapter>,
    shut_down: AtomicBool,
}

fn wintun_error(e: wintun_bindings::Error) -> io::Error {
    match e {
        wintun_bindings::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

impl Tun {
    /// Opens (or creates) the adapter named `cfg.name`, starts its session
    /// and puts the VIPs on it.
    pub fn create(cfg: &TunConfig) -> io::Result<Tun> {
        let dll = std::env::current_exe()?
            .parent()
            .map(|d| d.join("wintun.dll"))
            .ok_or_else(|| io::Error::other("the executable has no folder"))?;
        // SAFETY: wintun.dll is the library these bindings were written
        // for; loading it runs its (trusted) initialisation.
        let wintun = unsafe { wintun_bindings::load_from_path(&dll) }.map_err(|e| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("cannot load {}: {e}", dll.display()),
            )
        })?;
        let adapter = match Adapter::open(&wintun, &cfg.name) {
            Ok(a) => a,
            Err(_) => {
                Adapter::create(&wintun, &cfg.name, "cyphonic", None).map_err(wintun_error)?
            }
        };
        let luid = adapter.get_luid();
        // SAFETY: NET_LUID_LH is a union whose Value covers all of it.
        let luid = unsafe { luid.Value };
        ipconfig::apply(&mut WinIpHelper, luid, &ipconfig::plan(cfg))?;
        let session = adapter
            .start_session(wintun_bindings::MAX_RING_CAPACITY)
            .map_err(wintun_error)?;
        Ok(Tun {
            name: cfg.name.clone(),
            mtu: cfg.mtu,
            session,
            _adapter: adapter,
            shut_down: AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    pub fn offload(&self) -> bool {
        false
    }

    pub fn udp_offload(&self) -> bool {
        false
    }

    fn check_open(&self) -> io::Result<()> {
        if self.shut_down.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        Ok(())
    }

    /// Reads one packet, blocking until one arrives or [`Tun::shutdown`].
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.check_open()?;
        self.session.recv(buf).map_err(|e| {
            if self.shut_down.load(Ordering::SeqCst) {
                io::ErrorKind::ConnectionAborted.into()
            } else {
                e
            }
        })
    }

    /// Writes one packet.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.check_open()?;
        let size = u16::try_from(packet.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "packet over 64 KiB"))?;
        let mut out = self
            .session
            .allocate_send_packet(size)
            .map_err(wintun_error)?;
        out.bytes_mut().copy_from_slice(packet);
        self.session.send_packet(out);
        Ok(packet.len())
    }

    /// What the ring holds, up to `bufs.len()` packets, each at `offset`
    /// in its buffer, without waiting: [`io::ErrorKind::WouldBlock`] when
    /// it holds none. `scratch` is unused.
    pub fn try_recv_batch(
        &self,
        _scratch: &mut [u8],
        bufs: &mut [Vec<u8>],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        super::check_batch(bufs, sizes)?;
        self.check_open()?;
        let mut n = 0;
        while n < bufs.len() {
            match self.session.try_recv(&mut bufs[n][offset..]) {
                Ok(size) => {
                    sizes[n] = size;
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Waits until the ring holds a packet, or [`Tun::shutdown`].
    pub fn wait_readable(&self) -> io::Result<()> {
        self.check_open()?;
        self.session.wait_read().map_err(|e| {
            if self.shut_down.load(Ordering::SeqCst) {
                io::ErrorKind::ConnectionAborted.into()
            } else {
                wintun_error(e)
            }
        })
    }

    /// Writes each `bufs[i][offset..]`; every packet is attempted and the
    /// last error, if any, returned.
    pub fn send_batch(&self, bufs: &mut [Vec<u8>], offset: usize) -> io::Result<()> {
        let mut result = Ok(());
        for b in bufs.iter() {
            let packet = b.get(offset..).unwrap_or_default();
            if packet.is_empty() {
                result = Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "send_batch: a buffer holds no packet after its headroom",
                ));
                continue;
            }
            if let Err(e) = self.send(packet) {
                result = Err(e);
            }
        }
        result
    }

    /// Wakes threads blocked in [`Tun::recv`]; from now on every call fails
    /// with [`io::ErrorKind::ConnectionAborted`].
    pub fn shutdown(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
        if let Err(e) = self.session.shutdown() {
            tracing::warn!(tun = %self.name, error = %e, "could not wake TUN readers");
        }
    }
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("mtu", &self.mtu)
            .finish()
    }
}
