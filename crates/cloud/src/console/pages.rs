//! The console's pages, rendered on the server: plain HTML and one small
//! stylesheet, no script. Every value from the database or a node is
//! escaped ([`esc`]); every form that changes state carries the session's
//! CSRF token.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use crate::store::{DeviceKind, DeviceRecord};
use cyphonic_proto::signal::TunnelReport;

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24}\
header{background:#1b1f24;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:center}\
header a{color:#fff}header form{margin-left:auto}main{padding:1em 1.2em}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border-bottom:1px solid #d0d7de;padding:.3em .8em;text-align:left}\
.online{color:#1a7f37;font-weight:600}.offline{color:#6e7781}.disabled,.revoked{color:#cf222e}\
.token{font-family:monospace;font-size:1.3em;background:#fff8c5;padding:.4em;display:inline-block}\
.error{color:#cf222e}form.inline{display:inline}textarea{width:100%;font-family:monospace}";

/// A whole page: `admin` is the logged-in administrator (none on the
/// login page), `csrf` the session's token for the logout form.
pub fn layout(title: &str, admin: Option<(&str, &str)>, body: &str) -> String {
    let mut nav = String::new();
    if let Some((name, csrf)) = admin {
        let _ = write!(
            nav,
            "<a href=\"/devices\">Devices</a><a href=\"/policy\">Policy</a>\
             <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             {} <button id=\"logout\">Log out</button></form>",
            esc(csrf),
            esc(name)
        );
    }
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title} · cyphonic</title><style>{STYLE}</style></head>\
         <body><header><strong>cyphonic</strong>{nav}</header><main><h1>{title}</h1>{body}</main></body></html>",
        title = esc(title),
    )
}

pub fn login(csrf: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" id=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    layout(
        "Log in",
        None,
        &format!(
            "{error}<form method=\"post\" action=\"/login\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <p><label>Name <input id=\"name\" name=\"name\" autocomplete=\"username\" required></label></p>\
             <p><label>Password <input id=\"password\" name=\"password\" type=\"password\" \
             autocomplete=\"current-password\" required></label></p>\
             <p><button id=\"login\">Log in</button></p></form>",
            esc(csrf)
        ),
    )
}

/// What the NMS knows of a registered node.
#[derive(Debug, Clone)]
pub struct Online {
    pub nat: String,
    pub transport: String,
    pub observed: String,
    pub seen_ago: Duration,
    pub tunnels: Option<TunnelReport>,
}

/// One device as the console shows it.
#[derive(Debug, Clone)]
pub struct DeviceView {
    pub device: DeviceRecord,
    /// For a general node, the adapter that serves it.
    pub adapter: Option<String>,
    pub online: Option<Online>,
    pub last_seen: Option<SystemTime>,
    /// Certificates still good and revoked.
    pub certs_good: u32,
    pub certs_revoked: u32,
}

impl DeviceView {
    /// "online", "offline", "disabled", "revoked" (certificates, none
    /// good) or "not enrolled".
    pub fn state(&self) -> &'static str {
        if self.device.disabled {
            "disabled"
        } else if self.online.is_some() {
            "online"
        } else if self.certs_good == 0 && self.certs_revoked > 0 {
            "revoked"
        } else if self.certs_good == 0 && self.device.kind == DeviceKind::Node {
            "not enrolled"
        } else {
            "offline"
        }
    }
}

/// "12 s ago", "3 min ago", "2 h ago", "5 d ago".
pub fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

/// "1.2 MB" style byte counts (powers of 1000).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn last_seen(d: &DeviceView, now: SystemTime) -> String {
    match (&d.online, d.last_seen) {
        (Some(o), _) => ago(o.seen_ago),
        (None, Some(t)) => ago(now.duration_since(t).unwrap_or_default()),
        (None, None) => "never".into(),
    }
}

/// The tunnels of a report as "peer path/transport" items.
fn tunnel_summary(report: &TunnelReport, name_of: &dyn Fn(Ipv4Addr) -> String) -> String {
    let mut out = String::new();
    for t in &report.tunnels {
        let _ = write!(
            out,
            "<span class=\"tunnel\">{} {}/{}</span> ",
            esc(&name_of(t.peer_vip4)),
            t.path.as_str(),
            t.transport.as_str()
        );
    }
    if usize::from(report.total) > report.tunnels.len() {
        let _ = write!(
            out,
            "(+{} more)",
            usize::from(report.total) - report.tunnels.len()
        );
    }
    out
}

pub fn devices(
    admin: &str,
    csrf: &str,
    devices: &[DeviceView],
    name_of: &dyn Fn(Ipv4Addr) -> String,
    now: SystemTime,
    nms_here: bool,
) -> String {
    let mut body = String::new();
    if !nms_here {
        body.push_str(
            "<p class=\"error\">No NMS runs in this process: online state and tunnels are unknown.</p>",
        );
    }
    let online = devices.iter().filter(|d| d.online.is_some()).count();
    let _ = write!(
        body,
        "<p>{} devices, {online} online.</p><table id=\"devices\"><thead><tr><th>Device</th><th>Kind</th>\
         <th>FQDN</th><th>VIPv4</th><th>VIPv6</th><th>State</th><th>NAT</th><th>Transport</th>\
         <th>Last seen</th><th>Tunnels</th></tr></thead><tbody>",
        devices.len()
    );
    for d in devices {
        let r = &d.device;
        let (nat, transport, tunnels) = match &d.online {
            Some(o) => (
                esc(&o.nat),
                esc(&o.transport),
                o.tunnels
                    .as_ref()
                    .map(|t| tunnel_summary(t, name_of))
                    .unwrap_or_default(),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let kind = match &d.adapter {
            Some(a) => format!("general (via {})", esc(a)),
            None => r.kind.as_str().to_owned(),
        };
        let state = d.state();
        let _ = write!(
            body,
            "<tr id=\"device-{id}\"><td><a href=\"/devices/{id}\">{id}</a></td><td>{kind}</td><td>{fqdn}</td>\
             <td>{vip4}</td><td>{vip6}</td><td class=\"state {class}\">{state}</td><td class=\"nat\">{nat}</td>\
             <td class=\"transport\">{transport}</td><td>{seen}</td><td class=\"tunnels\">{tunnels}</td></tr>",
            id = esc(&r.device_id),
            fqdn = esc(&r.fqdn),
            vip4 = r.vip4,
            vip6 = r.vip6,
            class = state.replace(' ', "-"),
            seen = last_seen(d, now),
        );
    }
    let _ = write!(
        body,
        "</tbody></table><h2>Add a device</h2><form method=\"post\" action=\"/devices\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label>Device ID <input id=\"new-device\" name=\"device_id\" required \
         pattern=\"[a-z0-9]([a-z0-9-]{{0,61}}[a-z0-9])?\"></label> <button id=\"add\">Add</button></form>",
        esc(csrf)
    );
    layout("Devices", Some((admin, csrf)), &body)
}

fn action(csrf: &str, id: &str, what: &str, label: &str) -> String {
    format!(
        "<form class=\"inline\" method=\"post\" action=\"/devices/{id}/{what}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button id=\"{what}\">{label}</button></form> ",
        id = esc(id),
        csrf = esc(csrf),
    )
}

pub fn device(
    admin: &str,
    csrf: &str,
    d: &DeviceView,
    certs: &[crate::store::CertificateRecord],
    name_of: &dyn Fn(Ipv4Addr) -> String,
    now: SystemTime,
) -> String {
    let r = &d.device;
    let state = d.state();
    let mut body = format!(
        "<table><tr><th>FQDN</th><td>{fqdn}</td></tr><tr><th>VIPs</th><td>{v4}, {v6}</td></tr>\
         <tr><th>State</th><td id=\"state\" class=\"{class}\">{state}</td></tr>\
         <tr><th>Last seen</th><td>{seen}</td></tr>",
        fqdn = esc(&r.fqdn),
        v4 = r.vip4,
        v6 = r.vip6,
        class = state.replace(' ', "-"),
        seen = last_seen(d, now),
    );
    if let Some(a) = &d.adapter {
        let _ = write!(body, "<tr><th>Adapter</th><td>{}</td></tr>", esc(a));
    }
    if let Some(o) = &d.online {
        let _ = write!(
            body,
            "<tr><th>Seen at</th><td>{}</td></tr><tr><th>NAT</th><td>{}</td></tr>\
             <tr><th>Transport to the cloud</th><td>{}</td></tr>",
            esc(&o.observed),
            esc(&o.nat),
            esc(&o.transport)
        );
    }
    body.push_str("</table><h2>Tunnels</h2>");
    match d.online.as_ref().and_then(|o| o.tunnels.as_ref()) {
        Some(report) if !report.tunnels.is_empty() => {
            body.push_str(
                "<table id=\"tunnels\"><thead><tr><th>Peer</th><th>Path</th><th>Transport</th>\
                 <th>Sent</th><th>Received</th></tr></thead><tbody>",
            );
            for t in &report.tunnels {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td class=\"path\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&name_of(t.peer_vip4)),
                    t.path.as_str(),
                    t.transport.as_str(),
                    bytes(t.tx_bytes),
                    bytes(t.rx_bytes)
                );
            }
            body.push_str("</tbody></table>");
        }
        _ => body.push_str("<p>None reported.</p>"),
    }
    body.push_str(
        "<h2>Certificates</h2><table><thead><tr><th>Serial</th><th>Status</th><th>Valid until</th></tr></thead><tbody>",
    );
    for c in certs {
        let until = humantime(c.not_after);
        let _ = write!(
            body,
            "<tr><td>{:#x}</td><td class=\"{s}\">{s}</td><td>{until}</td></tr>",
            c.serial,
            s = c.status.as_str()
        );
    }
    body.push_str("</tbody></table><h2>Actions</h2><p>");
    if r.disabled {
        body.push_str(&action(csrf, &r.device_id, "enable", "Enable"));
    } else {
        body.push_str(&action(csrf, &r.device_id, "disable", "Disable"));
    }
    body.push_str(&action(csrf, &r.device_id, "revoke", "Revoke certificates"));
    body.push_str(&action(
        csrf,
        &r.device_id,
        "reset",
        "Reset (new enrollment token)",
    ));
    body.push_str("</p>");
    layout(&r.device_id, Some((admin, csrf)), &body)
}

/// The page that shows a device's one-time enrollment token, once.
pub fn token(admin: &str, csrf: &str, device: &DeviceRecord, token: &str, what: &str) -> String {
    layout(
        &device.device_id,
        Some((admin, csrf)),
        &format!(
            "<p>{what} <strong>{fqdn}</strong> ({v4}, {v6}). Its one-time enrollment token, shown only now:</p>\
             <p class=\"token\" id=\"token\">{token}</p>\
             <p>On the device: <code>cyphonic node enroll --cloud &lt;cloud address&gt; --device {id} \
             --password '&lt;the token&gt;' --ca root.pem</code>. It works once.</p><p><a href=\"/devices/{id}\">Back to the device</a></p>",
            fqdn = esc(&device.fqdn),
            v4 = device.vip4,
            v6 = device.vip6,
            token = esc(token),
            id = esc(&device.device_id),
            what = esc(what),
        ),
    )
}

pub fn policy(
    admin: &str,
    csrf: &str,
    current: Option<(u64, &str)>,
    summary: Option<&str>,
    message: Option<(&str, bool)>,
) -> String {
    let mut body = String::new();
    if let Some((text, ok)) = message {
        let _ = write!(
            body,
            "<p class=\"{}\" id=\"message\">{}</p>",
            if ok { "online" } else { "error" },
            esc(text)
        );
    }
    match current {
        Some((version, _)) => {
            let _ = write!(body, "<p>Version {version}.</p>");
        }
        None => body.push_str("<p>No policy is set: every device may reach every other.</p>"),
    }
    if let Some(s) = summary {
        let _ = write!(body, "<pre id=\"summary\">{}</pre>", esc(s));
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/policy\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <p><textarea id=\"document\" name=\"document\" rows=\"20\">{}</textarea></p>\
         <p><button id=\"save\">Check and save</button></p></form>",
        esc(csrf),
        esc(current.map_or("", |(_, d)| d))
    );
    layout("Policy", Some((admin, csrf)), &body)
}

pub fn message(admin: Option<(&str, &str)>, title: &str, text: &str) -> String {
    layout(
        title,
        admin,
        &format!(
            "<p class=\"error\" id=\"message\">{}</p><p><a href=\"/devices\">Devices</a></p>",
            esc(text)
        ),
    )
}

/// A UTC time as "2026-12-04 15:20 UTC".
fn humantime(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_closes_every_way_out_of_text_and_attributes() {
        assert_eq!(
            esc("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        let page = login("\"><script>", Some("<b>"));
        assert!(!page.contains("<script>"));
        assert!(!page.contains("<b>"));
    }

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_234_567), "1.2 MB");
        assert_eq!(ago(Duration::from_secs(5)), "5 s ago");
        assert_eq!(ago(Duration::from_secs(7200)), "2 h ago");
        assert_eq!(
            humantime(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_397_600)),
            "2026-12-04 15:20 UTC"
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
