//! Noticing network changes at once: on Linux a netlink socket subscribed
//! to address, route and link events (rtnetlink(7)); on Windows the IP
//! Helper's address and route change notifications. Every event wakes the
//! watcher; what changed is read afterwards from the interfaces themselves,
//! so the messages need no parsing.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Runs `on_change` (on its own thread) after every burst of address,
/// route or link changes; bursts are coalesced over `settle`. Stops when
/// the returned guard is dropped.
pub struct NetWatch {
    stop: Arc<AtomicBool>,
    /// Wakes the watcher to stop (Linux: it waits without a timeout).
    #[cfg(target_os = "linux")]
    bell: Arc<crate::wait::Bell>,
    thread: Option<JoinHandle<()>>,
}

impl NetWatch {
    #[cfg(target_os = "linux")]
    pub fn start(settle: Duration, on_change: impl Fn() + Send + 'static) -> io::Result<NetWatch> {
        use std::os::fd::AsRawFd;
        let fd = open_socket()?;
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let bell = Arc::new(crate::wait::Bell::new()?);
        let set = crate::wait::WaitSet::new()?;
        set.add(fd, 0, false)?;
        set.add(bell.as_raw_fd(), 1, false)?;
        let thread = std::thread::Builder::new()
            .name("cy-netwatch".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut ready = [0u64; 2];
                while !halt.load(Ordering::Relaxed) {
                    match set.wait(&mut ready, None) {
                        Ok(n) if ready[..n].contains(&0) => {}
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::debug!(error = %e, "network watch cannot wait");
                            std::thread::sleep(Duration::from_millis(250));
                            continue;
                        }
                    }
                    drain(fd, &mut buf);
                    // Coalesce a burst (an address and its routes arrive as
                    // several messages).
                    let deadline = std::time::Instant::now() + settle;
                    loop {
                        let left = deadline.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() || !readable(fd, left.as_millis() as i32) {
                            break;
                        }
                        drain(fd, &mut buf);
                    }
                    on_change();
                }
                // SAFETY: fd is ours and closed exactly once, here.
                unsafe { libc::close(fd) };
            })?;
        Ok(NetWatch {
            stop,
            bell,
            thread: Some(thread),
        })
    }

    #[cfg(windows)]
    pub fn start(settle: Duration, on_change: impl Fn() + Send + 'static) -> io::Result<NetWatch> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let registration = windows::Registration::new(tx)?;
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cy-netwatch".into())
            .spawn(move || {
                // Dropped (the notifications cancelled) when the thread ends.
                let _registration = registration;
                while !halt.load(Ordering::Relaxed) {
                    if rx.recv_timeout(Duration::from_millis(250)).is_err() {
                        continue;
                    }
                    let deadline = std::time::Instant::now() + settle;
                    loop {
                        let left = deadline.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() || rx.recv_timeout(left).is_err() {
                            break;
                        }
                    }
                    on_change();
                }
            })?;
        Ok(NetWatch {
            stop,
            thread: Some(thread),
        })
    }

    #[cfg(not(any(target_os = "linux", windows)))]
    pub fn start(
        _settle: Duration,
        _on_change: impl Fn() + Send + 'static,
    ) -> io::Result<NetWatch> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "network change events need Linux",
        ))
    }
}

impl Drop for NetWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        #[cfg(target_os = "linux")]
        self.bell.ring();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(target_os = "linux")]
fn open_socket() -> io::Result<i32> {
    // SAFETY: plain socket/bind calls on a fresh descriptor; sockaddr_nl is
    // zero-initialised and fully set before use.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = (libc::RTMGRP_LINK
            | libc::RTMGRP_IPV4_IFADDR
            | libc::RTMGRP_IPV6_IFADDR
            | libc::RTMGRP_IPV4_ROUTE
            | libc::RTMGRP_IPV6_ROUTE) as u32;
        let r = libc::bind(
            fd,
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        if r < 0 {
            let e = io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(fd)
    }
}

#[cfg(target_os = "linux")]
fn readable(fd: i32, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) > 0 }
}

#[cfg(target_os = "linux")]
fn drain(fd: i32, buf: &mut [u8]) {
    loop {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            return;
        }
    }
}

#[cfg(windows)]
mod windows {
    use std::io;
    use std::sync::mpsc::Sender;

    use windows_sys::Win32::Foundation::{HANDLE, NO_ERROR};
    use windows_sys::Win32::NetworkManagement::IpHelper::{
        CancelMibChangeNotify2, NotifyRouteChange2, NotifyUnicastIpAddressChange,
        MIB_IPFORWARD_ROW2, MIB_NOTIFICATION_TYPE, MIB_UNICASTIPADDRESS_ROW,
    };
    use windows_sys::Win32::Networking::WinSock::AF_UNSPEC;

    /// The two notifications; cancelled on drop, before the sender they
    /// point to is freed.
    pub struct Registration {
        handles: Vec<HANDLE>,
        sender: *mut Sender<()>,
    }

    // SAFETY: the handles are only used to cancel, the sender is only
    // touched by the callbacks (Sender is Send) and freed after them.
    unsafe impl Send for Registration {}

    unsafe extern "system" fn on_address(
        context: *const core::ffi::c_void,
        _row: *const MIB_UNICASTIPADDRESS_ROW,
        _kind: MIB_NOTIFICATION_TYPE,
    ) {
        // SAFETY: context is the Sender boxed by Registration::new, alive
        // until both notifications are cancelled.
        let _ = unsafe { &*(context as *const Sender<()>) }.send(());
    }

    unsafe extern "system" fn on_route(
        context: *const core::ffi::c_void,
        _row: *const MIB_IPFORWARD_ROW2,
        _kind: MIB_NOTIFICATION_TYPE,
    ) {
        // SAFETY: as in on_address.
        let _ = unsafe { &*(context as *const Sender<()>) }.send(());
    }

    impl Registration {
        /// One more notification: `notify` registers it with the sender as
        /// its context and returns the Win32 status; kept until drop.
        fn add(
            &mut self,
            notify: impl FnOnce(*const core::ffi::c_void, &mut HANDLE) -> u32,
        ) -> io::Result<()> {
            let mut handle: HANDLE = std::ptr::null_mut();
            let status = notify(self.sender as *const _, &mut handle);
            if status != NO_ERROR {
                return Err(io::Error::from_raw_os_error(status as i32));
            }
            self.handles.push(handle);
            Ok(())
        }

        pub fn new(tx: Sender<()>) -> io::Result<Registration> {
            let mut reg = Registration {
                handles: Vec::new(),
                sender: Box::into_raw(Box::new(tx)),
            };
            // SAFETY: the callbacks match the documented signatures and
            // the context outlives the registrations (see Drop).
            reg.add(|context, handle| unsafe {
                NotifyUnicastIpAddressChange(AF_UNSPEC, Some(on_address), context, false, handle)
            })?;
            // SAFETY: as above.
            reg.add(|context, handle| unsafe {
                NotifyRouteChange2(AF_UNSPEC, Some(on_route), context, false, handle)
            })?;
            Ok(reg)
        }
    }

    impl Drop for Registration {
        fn drop(&mut self) {
            for h in self.handles.drain(..) {
                // SAFETY: each handle came from a Notify* call; cancelling
                // waits for callbacks in flight.
                unsafe { CancelMibChangeNotify2(h) };
            }
            // SAFETY: no callback can run any more; the box is ours.
            drop(unsafe { Box::from_raw(self.sender) });
        }
    }
}
