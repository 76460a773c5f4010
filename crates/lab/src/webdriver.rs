//! A headless Chromium driven over the W3C WebDriver protocol, inside a
//! lab namespace: Debian's `chromedriver` runs there (so the browser sees
//! the namespace's network, its loopback included) and this client speaks
//! to it over sockets opened in that namespace.
//!
//! The client is small and blocking on purpose: the lab is synchronous,
//! and the commands a console test needs (open a URL, find an element by
//! CSS selector, click, type, read text, take a screenshot) are a handful
//! of JSON requests (W3C WebDriver, https://www.w3.org/TR/webdriver2/).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use base64::Engine;
use serde_json::{json, Value};

use crate::{wait_until, Lab};

/// The key of an element reference in WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// A request's answer must arrive within this (page loads included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A browser session.
pub struct Browser {
    netns: PathBuf,
    driver: SocketAddr,
    session: String,
    pid: u32,
}

impl Browser {
    /// Starts chromedriver on `port` in namespace `ns` and a headless
    /// Chromium session with a fresh profile under the lab's folder.
    pub fn start(lab: &mut Lab, ns: &str, port: u16) -> anyhow::Result<Browser> {
        let full = lab.ns(ns)?;
        let pid = lab.spawn(
            ns,
            &["chromedriver", &format!("--port={port}")],
            "chromedriver",
            &[],
        )?;
        let mut browser = Browser {
            netns: PathBuf::from("/run/netns").join(&full),
            driver: SocketAddr::from(([127, 0, 0, 1], port)),
            session: String::new(),
            pid,
        };
        wait_until("chromedriver to answer", Duration::from_secs(20), || {
            let status = browser.request("GET", "/status", None)?;
            Ok((status["ready"] == true).then_some(()))
        })?;
        let profile = lab.dir().join("chromium-profile");
        std::fs::create_dir_all(&profile)?;
        let args = [
            "--headless=new".to_owned(),
            // The lab runs as root, where Chromium's sandbox cannot start.
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let answer = browser.request("POST", "/session", Some(caps))?;
        browser.session = answer["sessionId"]
            .as_str()
            .context("no sessionId in the new session's answer")?
            .to_owned();
        // Finding an element waits for it (a page a click is still
        // loading), up to 10 s; a page load may take 30 s.
        browser.command(
            "POST",
            "/timeouts",
            json!({"implicit": 10_000, "pageLoad": 30_000}),
        )?;
        Ok(browser)
    }

    /// chromedriver's pid (the lab stops it at cleanup).
    pub fn driver_pid(&self) -> u32 {
        self.pid
    }

    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.command("POST", "/url", json!({ "url": url }))?;
        Ok(())
    }

    pub fn current_url(&self) -> anyhow::Result<String> {
        let v = self.command("GET", "/url", Value::Null)?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Waits (10 s at most) until the page's URL ends with `suffix`: a
    /// click's navigation may finish after the click command returns.
    pub fn wait_url(&self, suffix: &str) -> anyhow::Result<String> {
        wait_until(
            &format!("the page at {suffix}"),
            Duration::from_secs(10),
            || {
                let url = self.current_url()?;
                Ok(url.ends_with(suffix).then_some(url))
            },
        )
    }

    /// The first element matching `css`.
    pub fn find(&self, css: &str) -> anyhow::Result<String> {
        let v = self.command(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        )?;
        v[ELEMENT_KEY]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no element {css:?}"))
    }

    /// Whether an element matches `css`.
    pub fn exists(&self, css: &str) -> anyhow::Result<bool> {
        let v = self.command(
            "POST",
            "/elements",
            json!({"using": "css selector", "value": css}),
        )?;
        Ok(v.as_array().is_some_and(|a| !a.is_empty()))
    }

    pub fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.find(css)?;
        self.command("POST", &format!("/element/{id}/click"), json!({}))?;
        Ok(())
    }

    pub fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let id = self.find(css)?;
        self.command("POST", &format!("/element/{id}/clear"), json!({}))?;
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )?;
        Ok(())
    }

    /// The rendered text of the first element matching `css`.
    pub fn text(&self, css: &str) -> anyhow::Result<String> {
        let id = self.find(css)?;
        let v = self.command("GET", &format!("/element/{id}/text"), Value::Null)?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let v = self.command("GET", "/screenshot", Value::Null)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("no screenshot data")?)
            .context("screenshot is not base64")?;
        ensure!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session (Chromium exits); chromedriver stops with the lab.
    pub fn quit(&self) -> anyhow::Result<()> {
        self.request("DELETE", &format!("/session/{}", self.session), None)?;
        Ok(())
    }

    fn command(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let path = format!("/session/{}{path}", self.session);
        let body = (method == "POST").then_some(body);
        self.request(method, &path, body)
    }

    /// One HTTP/1.1 exchange with chromedriver; the answer's `value`.
    fn request(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut stream = connect_in(&self.netns, self.driver)?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.driver,
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        // chromedriver may keep the connection open: read until the answer
        // is complete by its own framing.
        let mut raw = Vec::new();
        let mut buf = [0u8; 16384];
        while !answer_complete(&raw) {
            let n = stream
                .read(&mut buf)
                .with_context(|| format!("{method} {path}: reading the answer"))?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        let (status, answer) = parse_response(&raw).with_context(|| format!("{method} {path}"))?;
        let v: Value = serde_json::from_slice(&answer)
            .with_context(|| format!("{method} {path}: the answer is not JSON"))?;
        if status != 200 {
            bail!(
                "{method} {path}: HTTP {status}: {} {}",
                v["value"]["error"].as_str().unwrap_or("?"),
                v["value"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
            );
        }
        Ok(v["value"].clone())
    }
}

/// A TCP connection made from inside the network namespace at `netns`
/// (a file under /run/netns): a short-lived thread enters it and connects;
/// the socket stays in that namespace whoever uses it afterwards.
fn connect_in(netns: &Path, addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let thread = std::thread::spawn(move || -> std::io::Result<TcpStream> {
        // SAFETY: setns on a valid namespace descriptor; it changes only
        // this thread's network namespace, and the thread ends after.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    });
    thread
        .join()
        .map_err(|_| anyhow!("the connecting thread panicked"))?
        .with_context(|| format!("connecting to {addr} in {}", netns.display()))
}

/// Whether `raw` holds a whole answer: its head, and all of a
/// Content-Length body or a chunked body's last chunk.
fn answer_complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

/// The status code and body of an HTTP/1.1 answer (Content-Length, chunked
/// or read to the end).
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the answer's head")?;
    let head = std::str::from_utf8(&raw[..split]).context("the answer's head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status code")?;
    let body = &raw[split + 4..];
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        let len = head
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(str::trim)
                    .map(str::to_owned)
            })
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(body.len());
        ensure!(body.len() >= len, "the answer was cut short");
        return Ok((status, body[..len].to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk without its size line")?;
        let size_text = std::str::from_utf8(&rest[..end])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        ensure!(rest.len() >= size, "a chunk cut short");
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"value\":null}";
        assert_eq!(
            parse_response(plain).unwrap(),
            (200, b"{\"value\":null}".to_vec())
        );
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"va\r\n3\r\nlue\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (404, b"{\"value".to_vec())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(answer_complete(plain));
        assert!(!answer_complete(&plain[..plain.len() - 1]));
        assert!(answer_complete(chunked));
        assert!(!answer_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
        ));
    }
}
