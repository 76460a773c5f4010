//! Waiting on several descriptors at once without timers (Linux): a
//! [`WaitSet`] is an epoll set built once and waited on many times, and a
//! [`Bell`] is an eventfd a thread rings to wake waiters (once rung, it
//! stays readable).
//!
//! The data plane's threads wait here rather than in `poll` with a timeout:
//! `poll` registers with every descriptor's wait queue on each call, and a
//! timeout arms a timer on each wait (in a virtual machine, programming the
//! timer is an exit to the hypervisor); an idle daemon also never wakes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An epoll set; each descriptor is added with a token that
/// [`WaitSet::wait`] reports when it is readable.
#[derive(Debug)]
pub struct WaitSet {
    epfd: OwnedFd,
}

impl WaitSet {
    pub fn new() -> io::Result<WaitSet> {
        // SAFETY: no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(WaitSet {
            epfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Reports `fd` as `token` whenever it is readable; `once`: only the
    /// first time, until [`WaitSet::rearm`].
    pub fn add(&self, fd: RawFd, token: u64, once: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, once)
    }

    /// Adds `fd` as a one-shot descriptor not reported until
    /// [`WaitSet::rearm`].
    pub fn add_disarmed(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl_events(libc::EPOLL_CTL_ADD, fd, token, libc::EPOLLONESHOT as u32)
    }

    /// Reports a `once` descriptor again (at once if it is readable now).
    pub fn rearm(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, true)
    }

    /// Stops reporting a `once` descriptor until [`WaitSet::rearm`].
    pub fn disarm(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl_events(libc::EPOLL_CTL_MOD, fd, token, libc::EPOLLONESHOT as u32)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, once: bool) -> io::Result<()> {
        let mut flags = libc::EPOLLIN as u32;
        if once {
            flags |= libc::EPOLLONESHOT as u32;
        }
        self.ctl_events(op, fd, token, flags)
    }

    fn ctl_events(&self, op: libc::c_int, fd: RawFd, token: u64, flags: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: flags,
            u64: token,
        };
        // SAFETY: a valid epoll descriptor and event for the call.
        if unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until a descriptor is readable (or `timeout`, if given; zero
    /// looks without waiting) and puts the tokens of those that are into
    /// `ready`: how many (0 on a timeout or a signal).
    pub fn wait(&self, ready: &mut [u64], timeout: Option<Duration>) -> io::Result<usize> {
        const MAX: usize = 8;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        // Whole milliseconds, rounded up (zero: only a look).
        let ms = timeout.map_or(-1, |t| {
            libc::c_int::try_from(t.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX)
        });
        let max = ready.len().clamp(1, MAX) as libc::c_int;
        // SAFETY: `events` holds `max` entries for the kernel to fill.
        let n = unsafe { libc::epoll_wait(self.epfd.as_raw_fd(), events.as_mut_ptr(), max, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for (slot, ev) in ready.iter_mut().zip(&events[..n]) {
            *slot = ev.u64;
        }
        Ok(n.min(ready.len()))
    }
}

/// An eventfd: [`Bell::ring`] makes it readable (for every [`WaitSet`] it
/// is in) until [`Bell::clear`].
#[derive(Debug)]
pub struct Bell {
    fd: OwnedFd,
}

impl Bell {
    pub fn new() -> io::Result<Bell> {
        // SAFETY: no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(Bell {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`. A full counter (2^64 - 2
        // rings unread) fails with EAGAIN and leaves it readable anyway.
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// Makes it unreadable again: whether it had been rung.
    pub fn clear(&self) -> bool {
        let mut n: u64 = 0;
        // SAFETY: reads at most 8 bytes into `n`.
        let r = unsafe { libc::read(self.fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
        r == 8 && n > 0
    }
}

impl AsRawFd for Bell {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens come back for readable descriptors; a one-shot descriptor
    /// is reported once until rearmed; a rung bell stays readable until
    /// cleared.
    #[test]
    fn a_wait_set_reports_readable_descriptors_by_token() {
        let set = WaitSet::new().unwrap();
        let (bell, once) = (Bell::new().unwrap(), Bell::new().unwrap());
        set.add(bell.as_raw_fd(), 7, false).unwrap();
        set.add(once.as_raw_fd(), 9, true).unwrap();
        let mut ready = [0u64; 4];
        let short = Some(Duration::from_millis(1));
        assert_eq!(set.wait(&mut ready, short).unwrap(), 0);
        bell.ring();
        once.ring();
        let n = set.wait(&mut ready, short).unwrap();
        let mut got = ready[..n].to_vec();
        got.sort_unstable();
        assert_eq!(got, [7, 9]);
        // The one-shot is not reported again; the bell is, until cleared.
        assert_eq!(set.wait(&mut ready, short).unwrap(), 1);
        assert_eq!(ready[0], 7);
        assert!(bell.clear());
        assert!(!bell.clear());
        assert_eq!(set.wait(&mut ready, short).unwrap(), 0);
        set.rearm(once.as_raw_fd(), 9).unwrap();
        assert_eq!(set.wait(&mut ready, short).unwrap(), 1);
        assert_eq!(ready[0], 9);
        // Disarmed (or added so), a readable descriptor is not reported.
        set.rearm(once.as_raw_fd(), 9).unwrap();
        set.disarm(once.as_raw_fd(), 9).unwrap();
        assert_eq!(set.wait(&mut ready, short).unwrap(), 0);
        let other = WaitSet::new().unwrap();
        other.add_disarmed(once.as_raw_fd(), 5).unwrap();
        assert_eq!(other.wait(&mut ready, short).unwrap(), 0);
        other.rearm(once.as_raw_fd(), 5).unwrap();
        assert_eq!(other.wait(&mut ready, short).unwrap(), 1);
        assert_eq!(ready[0], 5);
    }
}
