//! The local control socket: one request line (`status`, `ping <fqdn>`)
//! in, one JSON line out; and the CLI's side of it.

use super::*;
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};

/// What the local control socket is asked: one line per request.
pub enum ControlRequest {
    Status,
    Ping(String),
}

/// Where `cyphonic status` and `cyphonic ping` reach the daemon: a Unix
/// socket in the state directory (mode 0600, the peer's uid checked), or
/// on Windows a named pipe named after the state directory (its default
/// security lets only SYSTEM, Administrators and its creator write).
pub struct ControlListener {
    #[cfg(unix)]
    listener: UnixListener,
    #[cfg(windows)]
    next: tokio::net::windows::named_pipe::NamedPipeServer,
    #[cfg(windows)]
    name: String,
}

#[cfg(unix)]
pub type ControlStream = UnixStream;
#[cfg(windows)]
pub type ControlStream = tokio::net::windows::named_pipe::NamedPipeServer;

/// The named pipe of the daemon whose state lives in `state_dir`.
#[cfg(windows)]
pub fn pipe_name(state_dir: &std::path::Path) -> String {
    let dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_owned());
    format!(
        r"\\.\pipe\cyphonic-{:016x}",
        cyphonic_platform::stable_hash(dir.to_string_lossy().to_lowercase().as_bytes())
    )
}

impl ControlListener {
    /// The next client.
    pub async fn accept(&mut self) -> io::Result<ControlStream> {
        #[cfg(unix)]
        {
            self.listener.accept().await.map(|(s, _)| s)
        }
        #[cfg(windows)]
        {
            use tokio::net::windows::named_pipe::ServerOptions;
            self.next.connect().await?;
            let fresh = ServerOptions::new().create(&self.name)?;
            Ok(std::mem::replace(&mut self.next, fresh))
        }
    }
}

/// The control channel (a stale socket from a crashed run is replaced),
/// and the socket's path (the pipe's name on Windows).
pub fn control_listener(state: &StatePaths) -> anyhow::Result<(ControlListener, PathBuf)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let path = state.socket();
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        // Only the daemon's own user may ask (the umask does not decide).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
        Ok((ControlListener { listener }, path))
    }
    #[cfg(windows)]
    {
        use tokio::net::windows::named_pipe::ServerOptions;
        let name = pipe_name(&state.dir);
        // The first instance: fails if another daemon has this state.
        let next = ServerOptions::new()
            .first_pipe_instance(true)
            .create(&name)
            .with_context(|| format!("cannot listen on {name}: is another daemon running?"))?;
        Ok((
            ControlListener {
                next,
                name: name.clone(),
            },
            PathBuf::from(name),
        ))
    }
}

/// Serves `/metrics` (Prometheus text) on `listener`: each scrape asks the
/// daemon's loop for its status, as `cyphonic status --json` does.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    to_daemon: mpsc::Sender<ControlMessage>,
) {
    cyphonic_transport::metrics_http::serve(listener, move || {
        let to_daemon = to_daemon.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            to_daemon.send((ControlRequest::Status, tx)).await.ok()?;
            let body = tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .ok()?
                .ok()?;
            let status: serde_json::Value = serde_json::from_str(&body).ok()?;
            Some(crate::metrics::render(&status))
        }
    })
    .await;
}

/// The answer line for `cyphonic ping`.
pub fn ping_answer(result: &Result<crate::core::Pong, crate::core::PingError>) -> String {
    match result {
        Ok(pong) => serde_json::json!({ "ok": pong }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    }
    .to_string()
}

/// Reads one request line, hands it to the daemon's loop and writes the
/// answer (one JSON line). Bad requests get an error line.
pub async fn read_control(stream: ControlStream, to_daemon: mpsc::Sender<ControlMessage>) {
    // The socket's mode admits the daemon's user only; the peer's
    // credentials say so again (a socket opened before a mode change, a
    // descriptor passed on).
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions.
        let own = unsafe { libc::geteuid() };
        match stream.peer_cred() {
            Ok(c) if c.uid() == own || c.uid() == 0 => {}
            _ => return,
        }
    }
    let (r, mut w) = tokio::io::split(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(2),
        BufReader::new(r.take(1024)).read_line(&mut line),
    )
    .await;
    if !matches!(read, Ok(Ok(_))) {
        return;
    }
    let mut words = line.split_whitespace();
    let request = match (words.next(), words.next()) {
        (Some("status"), None) => ControlRequest::Status,
        (Some("ping"), Some(name)) => ControlRequest::Ping(name.to_owned()),
        _ => {
            let err = serde_json::json!({ "error": format!("unknown request {:?}", line.trim()) });
            let _ = w.write_all(format!("{err}\n").as_bytes()).await;
            return;
        }
    };
    let (tx, rx) = oneshot::channel();
    if to_daemon.send((request, tx)).await.is_err() {
        return;
    }
    if let Ok(Ok(body)) = tokio::time::timeout(Duration::from_secs(5), rx).await {
        let _ = w.write_all(body.as_bytes()).await;
        let _ = w.write_all(b"\n").await;
    }
}

/// `cyphonic status`: asks the running daemon.
pub async fn query_status(state_dir: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    query(state_dir, "status").await
}

/// `cyphonic ping`: one probe through the tunnel to `fqdn`; the answer says
/// which path it took and its round trip.
pub async fn query_ping(
    state_dir: &std::path::Path,
    fqdn: &str,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        !fqdn.is_empty() && fqdn.len() < 254 && !fqdn.contains(char::is_whitespace),
        "{fqdn:?} is not a node name"
    );
    query(state_dir, &format!("ping {fqdn}")).await
}

pub(super) async fn query(
    state_dir: &std::path::Path,
    request: &str,
) -> anyhow::Result<serde_json::Value> {
    #[cfg(unix)]
    let (path, connected) = {
        let path = StatePaths::new(state_dir).socket();
        let connected = tokio::net::UnixStream::connect(&path).await;
        (path.display().to_string(), connected)
    };
    #[cfg(windows)]
    let (path, connected) = {
        let name = pipe_name(state_dir);
        let connected = tokio::net::windows::named_pipe::ClientOptions::new().open(&name);
        (name, connected)
    };
    let mut stream = match connected {
        Ok(s) => s,
        Err(e) => bail!("no node daemon answers on {path} ({e}): is `cyphonic node run` running?"),
    };
    stream.write_all(format!("{request}\n").as_bytes()).await?;
    let mut body = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(stream).read_line(&mut body),
    )
    .await
    .context("the node daemon did not answer")??;
    Ok(serde_json::from_str(&body)?)
}

/// Human-readable status, like `tailscale status`.
pub fn render_status(v: &serde_json::Value) -> String {
    let mut out = String::new();
    let s = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    out.push_str(&format!(
        "{}  {}  {}\n",
        s(&v["fqdn"]),
        s(&v["vip4"]),
        s(&v["vip6"])
    ));
    let cloud = &v["cloud"];
    out.push_str(&format!(
        "cloud: nms {}  logged in: {}  registered: {}  seen as {}\n",
        s(&cloud["nms"]),
        cloud["logged_in"],
        cloud["registered"],
        s(&cloud["observed"])
    ));
    let mapping = &cloud["port_mapping"];
    if mapping.is_object() {
        out.push_str(&format!(
            "port mapping: {} ({}, {} s)\n",
            s(&mapping["external"]),
            s(&mapping["protocol"]),
            mapping["lifetime_secs"]
        ));
    }
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        out.push_str("no peers yet\n");
    }
    for p in peers {
        out.push_str(&format!(
            "{:<32} {:<15} {:<12} {:<8} {:<4} {:<28} rx {} B  tx {} B  handshake {}s ago\n",
            s(&p["fqdn"]),
            s(&p["vip4"]),
            s(&p["state"]),
            s(&p["path"]),
            s(&p["transport"]),
            s(&p["endpoint"]),
            p["rx_bytes"],
            p["tx_bytes"],
            s(&p["last_handshake_secs_ago"]),
        ));
    }
    // An adapter's general nodes.
    for g in v["general_nodes"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "general node {} {}  {}  {}  {}  lease v4 {} v6 {}\n",
            s(&g["fqdn"]),
            s(&g["mac"]),
            s(&g["vip4"]),
            s(&g["vip6"]),
            s(&g["state"]),
            secs(&g["lease4_secs"]),
            secs(&g["lease6_secs"]),
        ));
        for p in g["peers"].as_array().cloned().unwrap_or_default() {
            out.push_str(&format!(
                "    {:<32} {:<12} {:<8} {:<4} {}\n",
                s(&p["fqdn"]),
                s(&p["state"]),
                s(&p["path"]),
                s(&p["transport"]),
                s(&p["endpoint"]),
            ));
        }
    }
    out
}

/// A lease's remaining seconds, or "none" where there is no lease.
fn secs(v: &serde_json::Value) -> String {
    v.as_u64()
        .map_or_else(|| "none".to_owned(), |n| format!("{n}s"))
}
