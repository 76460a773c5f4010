//! `cyphonic lab mobility` end to end (root, as CI has): nodes move under
//! TCP and ping; the TCP connection survives and every tunnel comes back.

use std::process::Command;

#[test]
fn lab_mobility_passes() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cyphonic"))
        .args(["lab", "mobility"])
        .output()
        .expect("run cyphonic lab mobility");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "lab mobility failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("mobility: ") && stdout.contains(" passed, 0 failed"),
        "{stdout}"
    );
    assert!(stdout.contains("survives every move"), "{stdout}");
}
