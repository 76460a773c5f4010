//! cyphonic's OS integration: the parts of a node that touch the host.
//!
//! - [`tun`]: the TUN device that carries the node's virtual IPs, with
//!   batched, offload-aware packet IO for the data path.
//! - [`packet`]: raw Ethernet frames on one interface (the adapter's LAN).
//! - [`dns`]: making the node's local resolver the host's resolver for the
//!   overlay domain only, and putting the host's configuration back.
//!
//! Each module is a facade: the types that describe what to do are
//! OS-independent, the implementation is chosen per target (Linux, Windows).

pub mod dns;
pub mod ifaddrs;
pub mod ipconfig;
pub mod netwatch;
#[cfg(target_os = "linux")]
pub mod packet;
pub mod tun;
pub mod udp;
#[cfg(target_os = "linux")]
pub mod wait;

/// FNV-1a over `bytes`, 64 bits: a stable short name for a path (a pipe,
/// a registry key); not a secret and not collision-proof against intent.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether this process runs with an effective user id of 0.
///
/// Creating TUN devices and rewriting the resolver configuration need it;
/// callers check first so they can say so instead of failing on `EPERM`.
#[cfg(unix)]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this process runs elevated (as an administrator or SYSTEM).
#[cfg(windows)]
pub fn is_root() -> bool {
    use windows_sys::Win32::Security::{
        GetTokenInformation, TokenElevation, TOKEN_ELEVATION, TOKEN_QUERY,
    };
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};
    // SAFETY: out pointers valid for each call; the token handle is closed.
    unsafe {
        let mut token = std::ptr::null_mut();
        if OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) == 0 {
            return false;
        }
        let mut elevation = TOKEN_ELEVATION { TokenIsElevated: 0 };
        let mut len = 0u32;
        let ok = GetTokenInformation(
            token,
            TokenElevation,
            (&mut elevation as *mut TOKEN_ELEVATION).cast(),
            std::mem::size_of::<TOKEN_ELEVATION>() as u32,
            &mut len,
        );
        windows_sys::Win32::Foundation::CloseHandle(token);
        ok != 0 && elevation.TokenIsElevated != 0
    }
}
