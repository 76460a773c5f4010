//! Spawning and stopping the lab's child processes.
//!
//! Children are forked from one thread the lab owns, with
//! `PR_SET_PDEATHSIG(SIGKILL)`: the kernel kills them when that thread
//! ends, which is when the lab is dropped or the whole test process dies
//! (even by SIGKILL, when no destructor runs). A child forked from an
//! arbitrary caller thread would instead die with that thread, e.g. a tokio
//! blocking thread retiring after 10 s idle.
//!
//! Each child leads its own process group, so stopping it also stops what
//! it started (`sh -c 'a | b'`).

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a child gets between SIGTERM and SIGKILL.
pub(crate) const GRACE: Duration = Duration::from_secs(2);

type Request = (Command, mpsc::Sender<io::Result<Child>>);

pub(crate) struct Spawner {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    pub(crate) fn new() -> io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("cyphonic-lab-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })?;
        Ok(Spawner {
            requests: Some(tx),
            thread: Some(thread),
        })
    }

    pub(crate) fn spawn(&self, mut cmd: Command) -> io::Result<Child> {
        // Not while a signal's cleanup sweeps (a child started then could
        // write where it already swept).
        let _creating = crate::interrupt::creating();
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure only makes async-signal-safe calls (prctl,
        // getppid, setpgid, _exit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (tx, rx) = mpsc::channel();
        let requests = self
            .requests
            .as_ref()
            .ok_or_else(|| io::Error::other("lab already cleaned up"))?;
        requests
            .send((cmd, tx))
            .map_err(|_| io::Error::other("lab spawner thread is gone"))?;
        rx.recv()
            .map_err(|_| io::Error::other("lab spawner thread is gone"))?
    }

    /// Ends the spawner thread, which makes the kernel SIGKILL any child
    /// still alive.
    pub(crate) fn stop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `sig` to the child's process group, and to the child itself in
/// case it left the group.
pub(crate) fn signal(child: &Child, sig: libc::c_int) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain kill(2); the pid is our unreaped child, so it cannot
    // have been reused by another process.
    unsafe {
        libc::kill(-pid, sig);
        libc::kill(pid, sig);
    }
}

/// Stops children: SIGTERM to all, up to [`GRACE`] for them to exit, then
/// SIGKILL, then reap. Returns the first wait error, if any.
pub(crate) fn terminate_all(children: &mut [&mut Child], sig: libc::c_int) -> io::Result<()> {
    let mut first_err = None;
    let mut running: Vec<&mut Child> = Vec::new();
    for child in children.iter_mut() {
        match child.try_wait() {
            Ok(Some(_)) => {}
            Ok(None) => {
                signal(child, sig);
                running.push(child);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let deadline = Instant::now() + GRACE;
    while !running.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        running.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    }
    for child in running {
        tracing::debug!(pid = child.id(), "child ignored SIGTERM; killing");
        signal(child, libc::SIGKILL);
        if let Err(e) = child.wait() {
            first_err.get_or_insert(e);
        }
    }
    // Also reap the group leaders that exited during the grace period.
    for child in children.iter_mut() {
        let _ = child.try_wait();
    }
    first_err.map_or(Ok(()), Err)
}

pub(crate) fn terminate(child: &mut Child, sig: libc::c_int) -> io::Result<Option<ExitStatus>> {
    terminate_all(&mut [&mut *child], sig)?;
    child.try_wait()
}
