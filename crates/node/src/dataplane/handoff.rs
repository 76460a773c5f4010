//! Which thread reads a node's TUN device (Linux; `docs/architecture.md`,
//! "Threads of the data plane").
//!
//! While traffic is light, a receiving thread waits on the TUN beside its
//! socket and sends what the TUN holds itself; the TUN reader thread
//! sleeps. A request and its answer then wake one thread per node: with the
//! TUN reader waiting on the TUN too, the answer the kernel queues there
//! while the receiving thread writes the request woke the reader as well,
//! for nothing (the receiving thread sends the answer itself,
//! [`Outbound::turn_around`]). The TUN goes with the traffic: a receiving
//! thread that gets datagrams takes it (IPv4 and IPv6 have a thread each).
//! Once one read or write carries more than a request's worth of packets,
//! the TUN reader takes the TUN over and keeps it until it has been idle
//! for [`LINGER`]: under load both directions still have a thread each.
//!
//! The TUN is in every receiving thread's wait set, one-shot, armed in the
//! set of the thread that has it (the one it has [`Handoff::owner`]) and
//! disarmed in the others; moves arm and disarm under one lock, so the TUN
//! is never left armed nowhere while a receiving thread has it.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cyphonic_platform::tun::Tun;
use cyphonic_platform::wait::{Bell, WaitSet};

use super::{DataCounters, Outbound, Stop, TURNAROUND_MAX};

/// Tokens in the receiving threads' wait sets.
pub(super) const TOKEN_SOCKET: u64 = 0;
pub(super) const TOKEN_TUN: u64 = 1;
pub(super) const TOKEN_STOP: u64 = 2;
const TOKEN_KICK: u64 = 3;

/// [`Handoff::owner`] while the TUN reader has the TUN.
const READER: usize = usize::MAX;

/// How long the TUN reader keeps the TUN once it holds nothing.
const LINGER: Duration = Duration::from_millis(2);

pub(super) struct Handoff {
    /// Each receiving thread's wait set (by slot): its socket, the stop
    /// bell and the TUN.
    sets: Vec<WaitSet>,
    /// Who has the TUN: a receiving thread's slot, or [`READER`]. Read
    /// without the lock; changed (with the sets' arming) under it.
    owner: AtomicUsize,
    moves: Mutex<Moves>,
    /// The TUN reader's, while it does not have the TUN: the kick and the
    /// stop bell.
    reader_set: WaitSet,
    /// Rung when the TUN reader is to take the TUN.
    kick: Bell,
    tun_fd: RawFd,
}

struct Moves {
    /// The receiving thread the TUN goes back to from the reader.
    last: usize,
}

impl Handoff {
    /// One slot per socket in `socks` (their receiving threads); the TUN
    /// starts with the first.
    pub fn new(tun: &Tun, socks: &[&UdpSocket], stop: &Stop) -> io::Result<Handoff> {
        let tun_fd = tun.raw_fd();
        let mut sets = Vec::new();
        for (slot, sock) in socks.iter().enumerate() {
            let set = WaitSet::new()?;
            set.add(sock.as_raw_fd(), TOKEN_SOCKET, false)?;
            set.add(stop.bell.as_raw_fd(), TOKEN_STOP, false)?;
            if slot == 0 {
                set.add(tun_fd, TOKEN_TUN, true)?;
            } else {
                set.add_disarmed(tun_fd, TOKEN_TUN)?;
            }
            sets.push(set);
        }
        if sets.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no receiving thread to have the TUN",
            ));
        }
        let kick = Bell::new()?;
        let reader_set = WaitSet::new()?;
        reader_set.add(kick.as_raw_fd(), TOKEN_KICK, false)?;
        reader_set.add(stop.bell.as_raw_fd(), TOKEN_STOP, false)?;
        Ok(Handoff {
            sets,
            owner: AtomicUsize::new(0),
            moves: Mutex::new(Moves { last: 0 }),
            reader_set,
            kick,
            tun_fd,
        })
    }

    /// The wait set of receiving thread `slot`.
    pub fn set(&self, slot: usize) -> Option<&WaitSet> {
        self.sets.get(slot)
    }

    fn moves(&self) -> std::sync::MutexGuard<'_, Moves> {
        self.moves.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Receiving thread `slot` got datagrams: it takes the TUN from another
    /// receiving thread (not from the reader: that is load).
    pub fn take(&self, slot: usize) {
        let owner = self.owner.load(Ordering::Acquire);
        if owner == slot || owner == READER {
            return;
        }
        let mut moves = self.moves();
        let owner = self.owner.load(Ordering::Acquire);
        if owner == slot || owner == READER {
            return;
        }
        self.disarm(owner);
        self.owner.store(slot, Ordering::Release);
        moves.last = slot;
        self.arm(slot);
    }

    /// Load: the TUN reader takes the TUN, unless it has it.
    pub fn to_reader(&self, counters: &DataCounters) {
        if self.owner.load(Ordering::Acquire) == READER {
            return;
        }
        let mut moves = self.moves();
        let owner = self.owner.load(Ordering::Acquire);
        if owner == READER {
            return;
        }
        self.disarm(owner);
        self.owner.store(READER, Ordering::Release);
        moves.last = owner;
        drop(moves);
        counters.tun_to_reader.fetch_add(1, Ordering::Relaxed);
        self.kick.ring();
    }

    /// The TUN reader found the TUN idle: it goes back to the receiving
    /// thread that had it last.
    fn back_from_reader(&self) {
        let moves = self.moves();
        if self.owner.load(Ordering::Acquire) != READER {
            return;
        }
        self.owner.store(moves.last, Ordering::Release);
        self.arm(moves.last);
    }

    /// Receiving thread `slot` saw the TUN readable: it reads and sends
    /// what the TUN holds, and keeps the TUN unless that was more than a
    /// request's worth.
    pub fn serve(&self, slot: usize, out: &Outbound) {
        if self.owner.load(Ordering::Acquire) != slot {
            return;
        }
        let counters = out.counters();
        match out.drain(&mut out.lock()) {
            Ok(n) => {
                counters.tx_light.fetch_add(n as u64, Ordering::Relaxed);
                if n > TURNAROUND_MAX {
                    return self.to_reader(counters);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::debug!(error = %e, "TUN read failed"),
        }
        let _moves = self.moves();
        if self.owner.load(Ordering::Acquire) == slot {
            self.arm(slot);
        }
    }

    /// Under the lock.
    fn arm(&self, slot: usize) {
        if let Some(set) = self.sets.get(slot) {
            if let Err(e) = set.rearm(self.tun_fd, TOKEN_TUN) {
                tracing::warn!(error = %e, "cannot wait on the TUN");
            }
        }
    }

    /// Under the lock.
    fn disarm(&self, slot: usize) {
        if let Some(set) = self.sets.get(slot) {
            if let Err(e) = set.disarm(self.tun_fd, TOKEN_TUN) {
                tracing::debug!(error = %e, "cannot stop waiting on the TUN");
            }
        }
    }
}

/// TUN -> [`super::Sender`] on the TUN reader thread: while it has the
/// TUN, reads and sends until the TUN has held nothing for [`LINGER`];
/// then hands it back and sleeps until kicked.
pub(super) fn reader_loop(out: &Outbound, h: &Handoff, stop: &Stop) {
    let mut ready = [0u64; 2];
    while !stop.is_set() {
        if h.owner.load(Ordering::Acquire) != READER {
            if let Err(e) = h.reader_set.wait(&mut ready, None) {
                tracing::warn!(error = %e, "TUN reader cannot wait");
                std::thread::sleep(Duration::from_millis(10));
            }
            h.kick.clear();
            continue;
        }
        let failed = match out.drain(&mut out.lock()) {
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match out.tun.wait_readable_for(LINGER) {
                    Ok(true) => continue,
                    Ok(false) => {
                        h.back_from_reader();
                        continue;
                    }
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if stop.is_set() {
            tracing::debug!(error = %failed, "TUN reader stopping");
            return;
        }
        tracing::warn!(error = %failed, "TUN read failed");
        std::thread::sleep(Duration::from_millis(10));
    }
}
