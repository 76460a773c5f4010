//! What the lab tests share: run `cyphonic lab <scenario>` as root and
//! check its summary.

use std::process::Command;

/// Whether the tests may build namespaces (root, as CI has).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `cyphonic lab <scenario>`; `None` when not root (skipped), else
/// its stdout, after asserting it exited 0 and printed
/// "<scenario>: N passed, 0 failed" and no FAIL line.
pub fn lab_passes(scenario: &str) -> Option<String> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cyphonic"))
        .args(["lab", scenario])
        .output()
        .expect("run cyphonic lab");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{stdout}");
    assert!(
        out.status.success(),
        "lab {scenario} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{scenario}: ")) && stdout.contains(" passed, 0 failed"),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    Some(stdout)
}
