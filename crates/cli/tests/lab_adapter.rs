//! `cyphonic lab adapter`: general nodes behind two adapters, configured by
//! dhclient, dhcpcd and rdisc6, reaching a node and each other by name
//! (needs root and the clients `scripts/deps.sh` installs, as CI has).

use std::process::Command;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn lab_adapter_passes() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cyphonic"))
        .args(["lab", "adapter"])
        .output()
        .expect("run cyphonic");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "lab adapter failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("adapter: ") && stdout.contains(" passed, 0 failed"),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
}
