//! Running Windows programs under wine from a test: the loader and the
//! program from the environment scripts/windows.sh sets, a wineserver of
//! our own, and output through files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Kills and reaps a process started by the test, also when it fails.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wine() -> (PathBuf, PathBuf) {
    let exe = std::env::var_os("CYPHONIC_WINDOWS_EXE")
        .map(PathBuf::from)
        .expect("CYPHONIC_WINDOWS_EXE: the Windows cyphonic.exe (scripts/windows.sh sets it)");
    let wine = wine_loader();
    (wine, exe)
}

/// The wine loader (CYPHONIC_WINE).
pub fn wine_loader() -> PathBuf {
    std::env::var_os("CYPHONIC_WINE")
        .map(PathBuf::from)
        .expect("CYPHONIC_WINE: the wine loader (scripts/windows.sh sets it)")
}

/// A Unix path as the Windows program sees it (wine maps / to Z:).
pub fn win_path(p: &Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
}

/// Runs `cyphonic.exe args` under wine. Output goes through files, not
/// pipes: wine's helper processes (winedevice.exe), started by the first
/// call, inherit its output and would hold a pipe open for good.
pub fn windows_cyphonic(args: &[&str]) -> std::process::Output {
    let (_, exe) = wine();
    windows_program(&exe, args)
}

/// Runs a Windows program under wine, its output through files.
pub fn windows_program(exe: &Path, args: &[&str]) -> std::process::Output {
    let wine = wine_loader();
    let out = tempfile::tempfile().expect("stdout file");
    let err = tempfile::tempfile().expect("stderr file");
    let status = Command::new(wine)
        .arg(exe)
        .args(args)
        .env("WINEDEBUG", "-all")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .status()
        .expect("run cyphonic.exe under wine");
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    std::process::Output {
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

/// wineserver, started with no terminal or pipes of ours (a wineserver the
/// first `wine` call started would hold that call's output pipes open for
/// as long as any Windows process runs); stopped, with every process of
/// the prefix, on drop.
pub struct WineServer(PathBuf);

impl WineServer {
    pub fn start() -> WineServer {
        let server = wine_loader().with_file_name("wineserver");
        let started = Command::new(&server)
            .arg("-p")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start wineserver");
        assert!(started.success(), "wineserver -p: {started}");
        WineServer(server)
    }
}

impl Drop for WineServer {
    fn drop(&mut self) {
        let _ = Command::new(&self.0).arg("-k").status();
    }
}
