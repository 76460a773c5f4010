//! The Windows installer under wine: a silent install (`/S`) lays out the
//! files, the uninstaller's registration and the Start menu entry, and the
//! installed cyphonic.exe runs; the silent uninstall removes all of it.
//!
//! Needs the installer and wine: `scripts/windows.sh test` builds it with
//! scripts/build-windows.sh, sets CYPHONIC_INSTALLER, CYPHONIC_WINE and
//! WINEPREFIX, and runs this.

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod wine;
use wine::{windows_program, WineServer};

const UNINSTALL_KEY: &str = r"HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall\cyphonic";

/// Removes what an install left in the prefix when the test ends, also
/// when it fails halfway (a passing run's uninstaller already did).
struct Leftovers(Vec<PathBuf>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for path in &self.0 {
            if path.is_dir() {
                let _ = std::fs::remove_dir_all(path);
            } else {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn reg_query(key: &str) -> std::process::Output {
    windows_program(Path::new("reg"), &["query", key])
}

#[test]
#[ignore = "needs the installer and wine: scripts/windows.sh test"]
fn the_installer_installs_silently_and_uninstalls_cleanly() {
    let installer = std::env::var_os("CYPHONIC_INSTALLER")
        .map(PathBuf::from)
        .expect("CYPHONIC_INSTALLER: target/windows/cyphonic-setup.exe");
    let prefix = std::env::var_os("WINEPREFIX")
        .map(PathBuf::from)
        .expect("WINEPREFIX");
    let _wineserver = WineServer::start();
    let folder = format!("cyphonic-test-{}", std::process::id());
    let dir = prefix.join("drive_c").join(&folder);
    let shortcut = prefix
        .join("drive_c/ProgramData/Microsoft/Windows/Start Menu/Programs/cyphonic starter.lnk");
    let _ = std::fs::remove_dir_all(&dir);
    let _leftovers = Leftovers(vec![dir.clone(), shortcut.clone()]);

    // NSIS takes the folder as the last argument, unquoted.
    let out = windows_program(&installer, &["/S", &format!(r"/D=C:\{folder}")]);
    assert!(out.status.success(), "install: {out:?}");
    for file in [
        "cyphonic.exe",
        "cyphonic-starter.exe",
        "wintun.dll",
        "uninstall.exe",
    ] {
        assert!(
            dir.join(file).is_file(),
            "{file} not installed in {}",
            dir.display()
        );
    }
    assert!(
        shortcut.is_file(),
        "no Start menu entry at {}",
        shortcut.display()
    );
    let key = reg_query(UNINSTALL_KEY);
    let listed = String::from_utf8_lossy(&key.stdout);
    assert!(
        key.status.success() && listed.contains("DisplayName"),
        "{key:?}"
    );
    assert!(listed.contains(&folder), "InstallLocation: {listed}");

    // The installed program runs.
    let exe = dir.join("cyphonic.exe");
    let version = windows_program(&exe, &["--version"]);
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("cyphonic "),
        "{version:?}"
    );

    // The uninstaller copies itself away and returns at once: wait until
    // its work is seen.
    let out = windows_program(&dir.join("uninstall.exe"), &["/S"]);
    assert!(out.status.success(), "uninstall: {out:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while dir.exists() || shortcut.exists() {
        assert!(
            Instant::now() < deadline,
            "still there after 60 s: {:?}",
            std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let key = reg_query(UNINSTALL_KEY);
    assert!(!key.status.success(), "the uninstall key stayed: {key:?}");
}
