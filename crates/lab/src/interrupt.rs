//! A lab run cut short by a signal (Ctrl-C, SIGTERM, SIGHUP) still removes
//! what its labs made. The process then exits without unwinding, so no
//! [`crate::Lab`] destructor runs; instead every live lab is registered
//! here with what names it (its prefix, work directory, reservation and
//! files it made outside them), and a thread woken by the signal deletes
//! the namespaces and `/etc/netns` entries under each prefix (killing
//! what runs in them first) and those files, then exits with 128 + the
//! signal. The lab's other processes die with this one
//! (`PR_SET_PDEATHSIG`, see `process`).

use std::fs;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, Once};

use super::netns::{KEEP_ENV, NETNS_ETC, NETNS_RUN};

/// What removing a lab takes, by name.
struct Live {
    prefix: String,
    dir: PathBuf,
    reservation: PathBuf,
    files: Vec<PathBuf>,
}

static LIVE: Mutex<Vec<Live>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<Live>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn register(prefix: &str, dir: &Path, reservation: &Path) {
    live().push(Live {
        prefix: prefix.to_owned(),
        dir: dir.to_owned(),
        reservation: reservation.to_owned(),
        files: Vec::new(),
    });
}

/// A file lab `prefix` made outside its directory.
pub(crate) fn add_file(prefix: &str, file: &Path) {
    if let Some(l) = live().iter_mut().find(|l| l.prefix == prefix) {
        l.files.push(file.to_owned());
    }
}

/// Lab `prefix` cleaned up after itself.
pub(crate) fn deregister(prefix: &str) {
    live().retain(|l| l.prefix != prefix);
}

/// Held while a lab makes a namespace or starts a process, and by the
/// cleaner from the signal to the exit: nothing is made behind its sweep.
static CREATING: Mutex<()> = Mutex::new(());

pub(crate) fn creating() -> std::sync::MutexGuard<'static, ()> {
    CREATING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The write end of the pipe the handler wakes the cleaner through.
static WAKE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = WAKE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; one byte from a local.
        unsafe {
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
    }
}

/// From now on SIGINT, SIGTERM and SIGHUP remove every live lab of this
/// process and end it (exit status 128 + the signal). For `cyphonic lab`;
/// once per process, later calls do nothing.
pub fn clean_up_on_signals() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = install());
    result
}

fn install() -> std::io::Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two descriptors of a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the read end is ours alone from here on.
    let mut wake = unsafe { fs::File::from_raw_fd(fds[0]) };
    WAKE.store(fds[1], Ordering::Relaxed);
    std::thread::Builder::new()
        .name("cyphonic-lab-signals".into())
        .spawn(move || {
            let mut sig = [0u8; 1];
            if wake.read_exact(&mut sig).is_err() {
                return;
            }
            let _no_more = creating();
            let labs = std::mem::take(&mut *live());
            for l in &labs {
                remove(l);
                eprintln!(
                    "lab {}: interrupted by signal {}; removed",
                    l.prefix, sig[0]
                );
            }
            std::process::exit(128 + i32::from(sig[0]));
        })?;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a handler that only writes to a
        // pipe; SA_RESTART keeps the lab's blocking calls going meanwhile.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Deletes what lab `l` made, by name; keeps going past errors, and
/// sweeps again while something is left (a running daemon may still add
/// a file to the work directory), a second at most.
fn remove(l: &Live) {
    for _ in 0..20 {
        if sweep(l) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// One sweep: whether nothing of the lab is left.
fn sweep(l: &Live) -> bool {
    let ours = |name: &str| name.starts_with(&format!("{}-", l.prefix));
    let entries = |dir: &str| -> Vec<String> {
        fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| ours(n))
                    .collect()
            })
            .unwrap_or_default()
    };
    for ns in entries(NETNS_RUN) {
        // Its processes first (they die with this one too, but not before
        // they could write where the sweep has been).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &ns])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<libc::pid_t>().ok())
            {
                // SAFETY: kill(2); the pid runs in this lab's namespace.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for name in entries(NETNS_ETC) {
        let _ = fs::remove_dir_all(Path::new(NETNS_ETC).join(name));
    }
    for f in &l.files {
        let _ = fs::remove_file(f);
    }
    let keep = std::env::var_os(KEEP_ENV).is_some();
    if !keep {
        let _ = fs::remove_dir_all(&l.dir);
    }
    let _ = fs::remove_file(&l.reservation);
    entries(NETNS_RUN).is_empty() && entries(NETNS_ETC).is_empty() && (keep || !l.dir.exists())
}
