//! Packet captures with tcpdump, for asserting what crossed a link.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::netns::{CaptureProcess, Lab};
use crate::process;
use crate::wait::wait_until;

const START_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `tcpdump -i <iface> -w <file> -U` in a lab namespace.
///
/// Stop it with [`Capture::stop`] before the lab is cleaned up (the pcap
/// lives in the lab's work directory); dropping it stops tcpdump too.
pub struct Capture {
    child: Option<Child>,
    pcap: PathBuf,
    what: String,
}

impl Lab {
    /// Starts capturing on `iface` in `ns` and returns once tcpdump reports
    /// "listening on" (within 5 s), so nothing sent afterwards is missed.
    pub fn capture(&mut self, ns: &str, iface: &str) -> anyhow::Result<Capture> {
        let CaptureProcess {
            child,
            pcap,
            log,
            what,
        } = self.spawn_capture(ns, iface)?;
        let mut capture = Capture {
            child: Some(child),
            pcap,
            what,
        };
        let ready = wait_until(
            &format!("{} to listen", capture.what),
            START_TIMEOUT,
            || {
                let text = fs::read_to_string(&log).unwrap_or_default();
                if text.contains("listening on") {
                    return Ok(Some(()));
                }
                if let Some(child) = capture.child.as_mut() {
                    if let Some(status) = child.try_wait()? {
                        bail!("tcpdump exited ({status}): {}", text.trim());
                    }
                }
                Ok(None)
            },
        );
        // On failure, dropping `capture` stops tcpdump.
        ready?;
        Ok(capture)
    }
}

impl Capture {
    /// The pcap file being written.
    pub fn path(&self) -> &Path {
        &self.pcap
    }

    /// Stops tcpdump (SIGTERM: it flushes and closes the file; SIGKILL after
    /// 2 s) and returns the pcap file's bytes. Can be called again to reread
    /// the file.
    pub fn stop(&mut self) -> anyhow::Result<Vec<u8>> {
        if let Some(mut child) = self.child.take() {
            process::terminate(&mut child, libc::SIGTERM)
                .with_context(|| format!("stopping {}", self.what))?;
        }
        fs::read(&self.pcap).with_context(|| format!("reading {}", self.pcap.display()))
    }

    /// Whether the raw pcap bytes written so far contain `needle` (payloads
    /// are stored unmodified, so a marker string in a datagram shows up).
    /// Call [`Capture::stop`] first to be sure every packet was written.
    pub fn contains(&self, needle: &[u8]) -> bool {
        let Ok(bytes) = fs::read(&self.pcap) else {
            return false;
        };
        !needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = process::terminate(&mut child, libc::SIGTERM) {
                tracing::warn!(capture = %self.what, error = %e, "stopping tcpdump");
            }
        }
    }
}
