//! `cyphonic lab nat-matrix`: NAT traversal on real kernel NAT, end to end
//! (needs root, as CI has).

use std::process::Command;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn lab_nat_matrix_passes() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cyphonic"))
        .args(["lab", "nat-matrix"])
        .output()
        .expect("run cyphonic");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "lab nat-matrix failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("nat-matrix: ") && stdout.contains(" passed, 0 failed"),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
}
