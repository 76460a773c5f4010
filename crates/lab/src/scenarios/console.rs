//! `cyphonic lab console`: the operator's web console driven in a real
//! headless Chromium (Debian's chromium and chromium-driver).
//!
//! ```text
//! internet (sw) -- cloud (AS, NMS, TRS; console on 127.0.0.1:8480), n1, n2, n3
//! ```
//!
//! An administrator is added with `cyphonic cloud admin add`; the browser,
//! in the cloud's namespace, logs in (a wrong password first), sees n1 and
//! n2 online with the path of their tunnel, adds the device `laptop`,
//! whose enrollment token the page shows once, enrolls it on n3's machine
//! with that token, sees it online, revokes it and sees it go offline, and
//! logs out. A screenshot of each page is kept in the artifacts folder
//! (`CYPHONIC_LAB_ARTIFACTS`, or a folder under the system's temporary
//! folder).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context};

use super::nat_matrix::establish;
use super::overlay::{cloud_cli, cloud_config, set_config_keys, Overlay, Report, Underlay};
use crate::wait_until;
use crate::webdriver::Browser;

/// Where the console listens in the cloud's namespace: plain HTTP on
/// loopback, as behind a reverse proxy (`console_tls = false`).
const CONSOLE: &str = "127.0.0.1:8480";
const DRIVER_PORT: u16 = 9515;

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    let mut report = Report::default();
    println!("console: the web console in headless Chromium");
    let artifacts = std::env::var_os("CYPHONIC_LAB_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("cyphonic-lab-artifacts"))
        .join("console");
    if let Err(e) = scenario(bin, &artifacts, &mut report) {
        report.check("scenario", Err(e));
    }
    println!("  screenshots in {}", artifacts.display());
    println!(
        "console: {} passed, {} failed",
        report.passed, report.failed
    );
    Ok(report.ok())
}

fn scenario(bin: &Path, artifacts: &Path, report: &mut Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    let mut o = Overlay::build("console", bin, Underlay::V4, &["n1", "n2", "n3"])?;
    let cfg = cloud_config(&o);
    set_config_keys(
        Path::new(&cfg),
        &[
            ("console_listen", format!("\"{CONSOLE}\"")),
            ("console_tls", "false".into()),
        ],
    )?;
    let out = cloud_cli(&o, &["cloud", "admin", "add", "--config", &cfg, "ops"])?;
    let admin_password = out
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains(' '))
        .with_context(|| format!("no generated password in {out:?}"))?
        .to_owned();
    o.start_cloud()?;
    for i in 0..2 {
        o.enroll(i)?;
        o.start_node(i)?;
    }
    for i in 0..2 {
        o.wait_registered(i, Duration::from_secs(20))?;
    }
    establish(&o, 0, 1, Duration::from_secs(15)).context("n1 -> n2")?;
    o.sh(0, &format!("ping -c3 -i0.2 -W2 {}", o.fqdn(1)))?;
    report.check(
        "cloud with the console, n1 and n2 registered, tunnel n1 -> n2 up",
        Ok(String::new()),
    );

    let cloud_ns = o.cloud_ns.clone();
    let browser = Browser::start(&mut o.lab, &cloud_ns, DRIVER_PORT)?;
    let result = drive(&mut o, &browser, &admin_password, artifacts, report);
    let _ = browser.quit();
    result
}

fn shot(browser: &Browser, artifacts: &Path, name: &str) -> anyhow::Result<()> {
    browser.screenshot(&artifacts.join(format!("{name}.png")))
}

/// The devices page, reloaded until `ready` holds for it.
fn devices_until(
    browser: &Browser,
    what: &str,
    ready: impl Fn(&Browser) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<String> {
    wait_until(what, Duration::from_secs(20), || {
        browser.goto(&format!("http://{CONSOLE}/devices"))?;
        ready(browser)
    })
}

fn drive(
    o: &mut Overlay,
    browser: &Browser,
    admin_password: &str,
    artifacts: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    report.check(
        "an anonymous visitor is sent to the login page",
        (|| {
            browser.goto(&format!("http://{CONSOLE}/devices"))?;
            let url = browser.wait_url("/login")?;
            shot(browser, artifacts, "1-login")?;
            Ok(url)
        })(),
    );
    report.check(
        "a wrong password is refused",
        (|| {
            browser.type_into("#name", "ops")?;
            browser.type_into("#password", "not-the-password")?;
            browser.click("#login")?;
            let error = browser.text("#error")?;
            ensure!(
                error.contains("Wrong name or password"),
                "page said {error:?}"
            );
            Ok(error)
        })(),
    );
    report.check(
        "the administrator logs in",
        (|| {
            browser.type_into("#name", "ops")?;
            browser.type_into("#password", admin_password)?;
            browser.click("#login")?;
            browser.wait_url("/devices")
        })(),
    );
    let online = |id: &'static str| {
        move |b: &Browser| -> anyhow::Result<Option<String>> {
            let state = b.text(&format!("#device-{id} .state"))?;
            Ok((state == "online").then_some(state))
        }
    };
    report.check(
        "n1 and n2 show online, n1's tunnel to n2 direct over UDP",
        devices_until(browser, "n1 and n2 online with their tunnel", |b| {
            let (n1, n2) = (online("n1")(b)?, online("n2")(b)?);
            let tunnels = b.text("#device-n1 .tunnels")?;
            let nat = b.text("#device-n1 .nat")?;
            Ok(
                (n1.is_some() && n2.is_some() && tunnels.contains("n2 direct/udp"))
                    .then(|| format!("n1: NAT {nat}, tunnels: {tunnels}")),
            )
        })
        .and_then(|s| {
            shot(browser, artifacts, "2-devices")?;
            Ok(s)
        }),
    );
    report.check(
        "n1's page lists its tunnel with its path, transport and bytes",
        (|| {
            // The bytes come with n1's next report to the NMS.
            let mut last = String::new();
            let table = wait_until(
                "n1's page to count its tunnel's bytes",
                Duration::from_secs(20),
                || {
                    browser.goto(&format!("http://{CONSOLE}/devices/n1"))?;
                    last = browser.text("#tunnels")?;
                    let listed =
                        last.contains("n2") && last.contains("direct") && last.contains("udp");
                    Ok((listed && !last.contains(" 0 B")).then(|| last.clone()))
                },
            )
            .with_context(|| format!("tunnels table: {last:?}"))?;
            shot(browser, artifacts, "3-device-n1")?;
            Ok(table.lines().last().unwrap_or_default().to_owned())
        })(),
    );

    // A new device, enrolled on n3's machine with the token the page shows.
    let token = (|| {
        browser.goto(&format!("http://{CONSOLE}/devices"))?;
        browser.type_into("#new-device", "laptop")?;
        browser.click("#add")?;
        let token = browser.text("#token")?;
        ensure!(
            token.len() == 35 && token.split('-').count() == 4,
            "token {token:?}"
        );
        shot(browser, artifacts, "4-token")?;
        Ok(token)
    })();
    let token = match token {
        Ok(t) => {
            report.check(
                "the device laptop is added and its one-time token shown",
                Ok(format!("{} characters", t.len())),
            );
            t
        }
        Err(e) => {
            report.check(
                "the device laptop is added and its one-time token shown",
                Err(e),
            );
            return Ok(());
        }
    };
    let laptop = 2;
    o.nodes[laptop].name = "laptop".into();
    report.check(
        "laptop enrolls with the token from the page, registers and shows online",
        (|| {
            o.enroll_with(laptop, &token)?;
            o.start_node(laptop)?;
            o.wait_registered(laptop, Duration::from_secs(20))?;
            let state = devices_until(browser, "laptop online", online("laptop"))?;
            shot(browser, artifacts, "5-laptop-online")?;
            Ok(state)
        })(),
    );
    report.check(
        "the token works once: a second enrollment with it is refused",
        (|| {
            let again = o.enroll_with(laptop, &token);
            ensure!(again.is_err(), "a second enrollment succeeded");
            Ok("refused".to_owned())
        })(),
    );
    report.check(
        "revoking laptop from its page: it goes offline, the node is refused",
        (|| {
            browser.goto(&format!("http://{CONSOLE}/devices/laptop"))?;
            browser.click("#revoke")?;
            // The answer (a redirect to this page) lists the certificate
            // revoked; reloading before it came would cancel the form.
            wait_until("the revocation's answer", Duration::from_secs(10), || {
                Ok(browser.text("body")?.contains("revoked").then_some(()))
            })?;
            let state = wait_until("laptop to go offline", Duration::from_secs(20), || {
                browser.goto(&format!("http://{CONSOLE}/devices/laptop"))?;
                let state = browser.text("#state")?;
                Ok((state != "online").then_some(state))
            })?;
            ensure!(state == "revoked", "laptop's state is {state:?}");
            shot(browser, artifacts, "6-laptop-revoked")?;
            let refused = wait_until("laptop to know", Duration::from_secs(20), || {
                Ok(o.status(laptop)?["cloud"]["refused"]
                    .as_str()
                    .map(str::to_owned))
            })?;
            Ok(format!("state {state}; the node says: {refused}"))
        })(),
    );
    report.check(
        "logging out ends the session",
        (|| {
            browser.goto(&format!("http://{CONSOLE}/devices"))?;
            browser.click("#logout")?;
            browser.wait_url("/login")?;
            browser.goto(&format!("http://{CONSOLE}/devices"))?;
            let url = browser.current_url()?;
            ensure!(url.ends_with("/login"), "after logout /devices gave {url}");
            Ok(url)
        })(),
    );
    Ok(())
}
