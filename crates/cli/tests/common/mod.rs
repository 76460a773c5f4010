//! What the lab tests share: run `cyphonic lab <scenario>` as root and
//! check its summary.

use std::process::Command;

/// Whether the tests may build namespaces (root, as CI has).
#[allow(dead_code)]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[allow(dead_code)]
/// Runs `cyphonic lab <scenario>`; `None` when not root (skipped), else
/// its stdout, after asserting it exited 0 and printed
/// "<scenario>: N passed, 0 failed" and no FAIL line.
pub fn lab_passes(scenario: &str) -> Option<String> {
    lab_passes_with(scenario, &[])
}

/// [`lab_passes`] with `env` set for the lab.
pub fn lab_passes_with(scenario: &str, env: &[(&str, &str)]) -> Option<String> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cyphonic"))
        .args(["lab", scenario])
        .envs(env.iter().copied())
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

/// Runs the `cyphonic` binary under test.
#[allow(dead_code)]
pub fn cyphonic(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cyphonic"))
        .args(args)
        .output()
        .expect("run cyphonic")
}

#[allow(dead_code)]
/// A cloud initialised in `d/cloud`, listening on loopback only, on ports
/// no other test uses: its config file and its AS port.
pub fn loopback_cloud(d: &std::path::Path) -> (std::path::PathBuf, u16) {
    let cloud = d.join("cloud");
    let out = cyphonic(&[
        "cloud",
        "init",
        "--dir",
        cloud.to_str().unwrap(),
        "--public",
        "127.0.0.1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = cloud.join("cloud.toml");
    // Listen on loopback only, on ports nobody else uses in this test.
    let text = std::fs::read_to_string(&cfg).unwrap();
    // Four ports per process: tests run as processes side by side.
    let port = 20000 + (std::process::id() % 10000) as u16 * 4;
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("as_listen") {
                format!("as_listen = [\"127.0.0.1:{port}\"]")
            } else if l.starts_with("nms_listen") {
                format!("nms_listen = [\"127.0.0.1:{}\"]", port + 1)
            } else if l.starts_with("nms_probe_port") {
                format!("nms_probe_port = {}", port + 2)
            } else if l.starts_with("trs_listen") {
                format!("trs_listen = [\"127.0.0.1:{}\"]", port + 3)
            } else if l.starts_with("quic_listen") || l.starts_with("tcp443_listen") {
                // Nothing on the host's port 443.
                format!("{} = []", l.split('=').next().unwrap_or_default().trim())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&cfg, text).unwrap();
    (cfg, port)
}

/// A `cyphonic cloud run` a test started: killed and reaped on drop, also
/// when the test fails.
#[allow(dead_code)]
pub struct CloudProcess(std::process::Child);

impl Drop for CloudProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cyphonic cloud run --config <cfg> <extra>`, its log (stderr) to
/// `log`, or discarded.
#[allow(dead_code)]
pub fn start_cloud(
    cfg: &std::path::Path,
    extra: &[&str],
    log: Option<&std::path::Path>,
) -> CloudProcess {
    let stderr = match log {
        Some(path) => std::process::Stdio::from(std::fs::File::create(path).expect("log file")),
        None => std::process::Stdio::null(),
    };
    CloudProcess(
        Command::new(env!("CARGO_BIN_EXE_cyphonic"))
            .args(["cloud", "run", "--config", cfg.to_str().unwrap()])
            .args(extra)
            .stderr(stderr)
            .spawn()
            .expect("start cloud"),
    )
}

/// `cyphonic cloud device add` with the operator's password; must work.
#[allow(dead_code)]
pub fn add_device(cfg: &std::path::Path, device: &str, password: &str) {
    let out = cyphonic(&[
        "cloud",
        "device",
        "add",
        "--config",
        cfg.to_str().unwrap(),
        device,
        "--password",
        password,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
