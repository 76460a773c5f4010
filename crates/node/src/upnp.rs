//! UPnP IGD port mapping, for gateways that speak neither PCP nor NAT-PMP
//! (`portmap` asks those first). The gateway is found with an SSDP search
//! (UPnP Device Architecture 1.1 §1.3), its description read over HTTP,
//! and its WANIPConnection (or WANPPPConnection) service asked with SOAP
//! for AddPortMapping, GetExternalIPAddress and DeletePortMapping.
//!
//! Only the IPv4 default gateway is believed: search answers from other
//! hosts, and descriptions or control URLs pointing elsewhere, are
//! ignored, so another host on the LAN cannot pose as the router.
//! Everything read from the network is bounded ([`MAX_HTTP`]) and timed
//! ([`HTTP_TIMEOUT`]).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Where SSDP searches go.
pub const SSDP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900);
/// What the search asks for: an Internet Gateway Device, version 2 or 1.
const SEARCH_TARGETS: [&str; 2] = [
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
];
/// The services that map ports, best first.
const SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];
/// How long the search waits for the gateway's answer (it is asked to
/// answer within a second: MX 1).
const SEARCH_WAIT: Duration = Duration::from_millis(1500);
/// One HTTP exchange with the gateway, connect to last byte.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// The most read of one HTTP answer or SSDP datagram.
pub const MAX_HTTP: usize = 64 * 1024;
/// UPnP error codes (IGD WANIPConnection:2 §2.5.16).
const CONFLICT_IN_MAPPING_ENTRY: u16 = 718;
const ONLY_PERMANENT_LEASES_SUPPORTED: u16 = 725;
/// External ports tried after the internal one is taken.
const OTHER_PORTS: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpnpError {
    #[error("no UPnP gateway answered")]
    NoGateway,
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the gateway refused: UPnP error {0}")]
    Refused(u16),
    #[error("the gateway's answer is malformed: {0}")]
    Malformed(&'static str),
}

/// An `http://` URL at an IPv4 address, as UPnP gateways give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub addr: SocketAddrV4,
    pub path: String,
}

impl Url {
    /// Parses an absolute `http://a.b.c.d[:port]/path` URL.
    pub fn parse(s: &str) -> Option<Url> {
        let rest = s.trim().strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = match authority.parse::<SocketAddrV4>() {
            Ok(a) => a,
            Err(_) => SocketAddrV4::new(authority.parse().ok()?, 80),
        };
        Some(Url {
            addr,
            path: path.to_owned(),
        })
    }

    /// `reference` (absolute, or a path) resolved against this URL.
    pub fn join(&self, reference: &str) -> Option<Url> {
        let reference = reference.trim();
        if reference.starts_with("http://") {
            return Url::parse(reference);
        }
        let path = if reference.starts_with('/') {
            reference.to_owned()
        } else {
            let dir = &self.path[..self.path.rfind('/').map_or(0, |i| i + 1)];
            format!("{}{reference}", if dir.is_empty() { "/" } else { dir })
        };
        Some(Url {
            addr: self.addr,
            path,
        })
    }
}

/// The gateway's port mapping service, found by [`discover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub control: Url,
    pub service: &'static str,
}

/// An SSDP search for `target`.
pub fn search_request(target: &str) -> String {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: {SSDP}\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: {target}\r\n\r\n"
    )
}

/// The LOCATION of a search answer (`HTTP/1.1 200 OK` with headers).
pub fn search_answer_location(answer: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(answer).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?;
    if !status.starts_with("HTTP/1.") || status.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("location")
            .then(|| value.trim().to_owned())
    })
}

/// The text of the first element named `name` (any namespace prefix),
/// entities `&amp;` `&lt;` `&gt;` decoded.
pub fn xml_text(xml: &str, name: &str) -> Option<String> {
    let mut at = 0;
    while let Some(i) = xml[at..].find('<') {
        let start = at + i + 1;
        let end = start + xml[start..].find('>')?;
        let tag = xml[start..end]
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("");
        let local = tag.rsplit(':').next().unwrap_or(tag);
        at = end + 1;
        if local == name && !xml[start..end].ends_with('/') {
            let len = xml[at..].find('<')?;
            let raw = xml[at..at + len].trim();
            return Some(
                raw.replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&"),
            );
        }
    }
    None
}

/// The port mapping service in a device description fetched from
/// `location`: the best of [`SERVICES`] and its control URL.
pub fn find_service(description: &str, location: &Url) -> Option<Gateway> {
    let base = xml_text(description, "URLBase")
        .and_then(|b| Url::parse(&b))
        .unwrap_or_else(|| location.clone());
    let services: Vec<&str> = description
        .split("<service>")
        .skip(1)
        .map(|s| s.split("</service>").next().unwrap_or(s))
        .collect();
    SERVICES.iter().find_map(|want| {
        services.iter().find_map(|s| {
            let service_type = xml_text(s, "serviceType")?;
            if service_type != *want {
                return None;
            }
            let control = base.join(&xml_text(s, "controlURL")?)?;
            Some(Gateway {
                control,
                service: want,
            })
        })
    })
}

/// A SOAP request for `action` of `service` with `args`, as the POST's
/// body.
pub fn soap_body(service: &str, action: &str, args: &[(&str, String)]) -> String {
    let mut body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{action} xmlns:u=\"{service}\">"
    );
    for (name, value) in args {
        body.push_str(&format!("<{name}>{value}</{name}>"));
    }
    body.push_str(&format!("</u:{action}></s:Body></s:Envelope>\r\n"));
    body
}

/// The arguments of AddPortMapping for UDP `internal_port` of `client` at
/// `external_port`, for `lease` seconds (0: permanent).
pub fn add_port_mapping_args(
    external_port: u16,
    internal_port: u16,
    client: Ipv4Addr,
    lease: u32,
) -> Vec<(&'static str, String)> {
    vec![
        ("NewRemoteHost", String::new()),
        ("NewExternalPort", external_port.to_string()),
        ("NewProtocol", "UDP".into()),
        ("NewInternalPort", internal_port.to_string()),
        ("NewInternalClient", client.to_string()),
        ("NewEnabled", "1".into()),
        ("NewPortMappingDescription", "cyphonic".into()),
        ("NewLeaseDuration", lease.to_string()),
    ]
}

/// Splits an HTTP/1.x response into its status code and body (by
/// Content-Length, chunked, or to the end).
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, Vec<u8>), UpnpError> {
    let malformed = |what| UpnpError::Http(String::from(what));
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| malformed("headers not text"))?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if !status.starts_with("HTTP/1.") {
        return Err(malformed("not an HTTP response"));
    }
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| malformed("no status code"))?;
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| malformed("bad Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.eq_ignore_ascii_case("chunked")
        {
            chunked = true;
        }
    }
    let body = &raw[head_end + 4..];
    if chunked {
        return Ok((code, dechunk(body)?));
    }
    match length {
        Some(n) if n > body.len() => Err(malformed("body shorter than its Content-Length")),
        Some(n) => Ok((code, body[..n].to_vec())),
        None => Ok((code, body.to_vec())),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, UpnpError> {
    let bad = || UpnpError::Http("bad chunked body".into());
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| bad())?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// One HTTP exchange: sends `request` to `addr`, reads the answer to its
/// end (the request says `Connection: close`).
async fn http(addr: SocketAddrV4, request: &[u8]) -> Result<(u16, Vec<u8>), UpnpError> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| UpnpError::Http(format!("connecting to {addr}: {e}")))?;
        stream
            .write_all(request)
            .await
            .map_err(|e| UpnpError::Http(e.to_string()))?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| UpnpError::Http(e.to_string()))?;
            if n == 0 {
                break;
            }
            if raw.len() + n > MAX_HTTP {
                return Err(UpnpError::Http(format!("answer over {MAX_HTTP} bytes")));
            }
            raw.extend_from_slice(&buf[..n]);
        }
        parse_http_response(&raw)
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| UpnpError::Http(format!("{addr} did not answer in time")))?
}

/// Finds the port mapping service of `gateway`: an SSDP search (to the
/// multicast group and to the gateway itself), then its description.
pub async fn discover(gateway: Ipv4Addr) -> Result<Gateway, UpnpError> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(|_| UpnpError::NoGateway)?;
    for target in SEARCH_TARGETS {
        let req = search_request(target);
        let _ = socket.send_to(req.as_bytes(), SSDP).await;
        let _ = socket.send_to(req.as_bytes(), (gateway, SSDP.port())).await;
    }
    let deadline = tokio::time::Instant::now() + SEARCH_WAIT;
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok((n, from))) =
        tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
    {
        if from.ip() != gateway {
            continue;
        }
        let Some(location) = search_answer_location(&buf[..n]).and_then(|l| Url::parse(&l)) else {
            continue;
        };
        if *location.addr.ip() != gateway {
            continue;
        }
        match describe(&location).await {
            Ok(g) => return Ok(g),
            Err(e) => tracing::debug!(%location.addr, error = %e, "UPnP description unusable"),
        }
    }
    Err(UpnpError::NoGateway)
}

async fn describe(location: &Url) -> Result<Gateway, UpnpError> {
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        location.path, location.addr
    );
    let (code, body) = http(location.addr, req.as_bytes()).await?;
    if code != 200 {
        return Err(UpnpError::Http(format!("description: status {code}")));
    }
    let text = String::from_utf8_lossy(&body);
    let g =
        find_service(&text, location).ok_or(UpnpError::Malformed("no WAN connection service"))?;
    if g.control.addr.ip() != location.addr.ip() {
        return Err(UpnpError::Malformed("control URL on another host"));
    }
    Ok(g)
}

/// Calls `action` on the gateway's service; the answer's body on success,
/// the UPnP error code otherwise.
async fn call(g: &Gateway, action: &str, args: &[(&str, String)]) -> Result<String, UpnpError> {
    let body = soap_body(g.service, action, args);
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\n\
         SOAPAction: \"{}#{action}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        g.control.path,
        g.control.addr,
        g.service,
        body.len()
    );
    let (code, answer) = http(g.control.addr, req.as_bytes()).await?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    if code == 200 {
        return Ok(text);
    }
    match xml_text(&text, "errorCode").and_then(|c| c.parse().ok()) {
        Some(c) => Err(UpnpError::Refused(c)),
        None => Err(UpnpError::Http(format!("{action}: status {code}"))),
    }
}

/// The gateway's public IPv4 address.
pub async fn external_address(g: &Gateway) -> Result<Ipv4Addr, UpnpError> {
    let answer = call(g, "GetExternalIPAddress", &[]).await?;
    xml_text(&answer, "NewExternalIPAddress")
        .and_then(|a| a.parse().ok())
        .ok_or(UpnpError::Malformed("no external address"))
}

/// Maps UDP `internal_port` of `client` for `lease` seconds: at
/// `preferred` (the port it had, or the internal port), else at a few
/// random ports if that one is taken. Returns the external address and
/// the lease granted (0: permanent, when the gateway grants no other).
pub async fn map(
    g: &Gateway,
    client: Ipv4Addr,
    internal_port: u16,
    preferred: u16,
    lease: u32,
) -> Result<(SocketAddrV4, u32), UpnpError> {
    let ip = external_address(g).await?;
    if ip.is_unspecified() {
        return Err(UpnpError::Malformed("the gateway has no external address"));
    }
    let mut ports = vec![preferred];
    ports.extend((0..OTHER_PORTS).map(|_| rand::random::<u16>().max(1024)));
    let mut lease = lease;
    let mut last = UpnpError::NoGateway;
    let mut i = 0;
    while i < ports.len() {
        let args = add_port_mapping_args(ports[i], internal_port, client, lease);
        match call(g, "AddPortMapping", &args).await {
            Ok(_) => return Ok((SocketAddrV4::new(ip, ports[i]), lease)),
            Err(UpnpError::Refused(ONLY_PERMANENT_LEASES_SUPPORTED)) if lease != 0 => {
                lease = 0;
                continue;
            }
            Err(e @ UpnpError::Refused(CONFLICT_IN_MAPPING_ENTRY)) => last = e,
            Err(e) => return Err(e),
        }
        i += 1;
    }
    Err(last)
}

/// Deletes the mapping at `external_port`.
pub async fn unmap(g: &Gateway, external_port: u16) -> Result<(), UpnpError> {
    let args = [
        ("NewRemoteHost", String::new()),
        ("NewExternalPort", external_port.to_string()),
        ("NewProtocol", "UDP".to_owned()),
    ];
    call(g, "DeletePortMapping", &args).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESCRIPTION: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><specVersion><major>1</major></specVersion>
<device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<controlURL>/ctl/L3F</controlURL></service></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<deviceList><device><serviceList>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>/ctl/IPConn?x=1&amp;y=2</controlURL></service>
</serviceList></device></deviceList></device></deviceList></device></root>"#;

    #[test]
    fn a_search_answer_gives_the_description_and_the_service() {
        let req = search_request(SEARCH_TARGETS[1]);
        assert!(req.starts_with("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"));
        assert!(req.ends_with("ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n"));
        let answer = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: x\r\n\
                       location: http://198.51.100.1:5000/rootDesc.xml\r\n\r\n";
        let loc = search_answer_location(answer).unwrap();
        let url = Url::parse(&loc).unwrap();
        assert_eq!(url.addr, "198.51.100.1:5000".parse().unwrap());
        assert_eq!(url.path, "/rootDesc.xml");
        assert_eq!(search_answer_location(b"NOTIFY * HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            search_answer_location(b"HTTP/1.1 404 x\r\nLocation: y\r\n\r\n"),
            None
        );

        let g = find_service(DESCRIPTION, &url).unwrap();
        assert_eq!(g.service, "urn:schemas-upnp-org:service:WANIPConnection:1");
        assert_eq!(g.control.addr, url.addr);
        assert_eq!(g.control.path, "/ctl/IPConn?x=1&y=2");
        assert_eq!(find_service("<root></root>", &url), None);
        // Relative references and URLBase.
        assert_eq!(url.join("ctl").unwrap().path, "/ctl");
        let deep = Url::parse("http://198.51.100.1/a/b.xml").unwrap();
        assert_eq!(deep.addr.port(), 80);
        assert_eq!(deep.join("c").unwrap().path, "/a/c");
        let based = DESCRIPTION.replace(
            "<specVersion>",
            "<URLBase>http://198.51.100.1:6000/</URLBase><specVersion>",
        );
        let g = find_service(&based, &url).unwrap();
        assert_eq!(g.control.addr, "198.51.100.1:6000".parse().unwrap());
        // Garbage never panics.
        for n in 0..DESCRIPTION.len() {
            if DESCRIPTION.is_char_boundary(n) {
                let _ = find_service(&DESCRIPTION[..n], &url);
            }
        }
        assert_eq!(Url::parse("https://198.51.100.1/"), None);
        assert_eq!(Url::parse("http://router.example/"), None);
    }

    #[test]
    fn soap_requests_and_answers() {
        let args = add_port_mapping_args(4501, 4501, Ipv4Addr::new(198, 51, 100, 10), 7200);
        let body = soap_body(SERVICES[1], "AddPortMapping", &args);
        assert!(body.contains(
            "<u:AddPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\">\
             <NewRemoteHost></NewRemoteHost><NewExternalPort>4501</NewExternalPort>\
             <NewProtocol>UDP</NewProtocol><NewInternalPort>4501</NewInternalPort>\
             <NewInternalClient>198.51.100.10</NewInternalClient>"
        ));
        assert!(body.contains("<NewLeaseDuration>7200</NewLeaseDuration></u:AddPortMapping>"));
        let answer = "<s:Envelope><s:Body><u:GetExternalIPAddressResponse xmlns:u=\"x\">\
                      <NewExternalIPAddress>192.0.2.101</NewExternalIPAddress>\
                      </u:GetExternalIPAddressResponse></s:Body></s:Envelope>";
        assert_eq!(
            xml_text(answer, "NewExternalIPAddress").as_deref(),
            Some("192.0.2.101")
        );
        let fault = "<s:Fault><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\">\
                     <errorCode>718</errorCode><errorDescription>ConflictInMappingEntry\
                     </errorDescription></UPnPError></detail></s:Fault>";
        assert_eq!(xml_text(fault, "errorCode").as_deref(), Some("718"));
        assert_eq!(xml_text(fault, "missing"), None);
        assert_eq!(xml_text("<a/><a>x</a>", "a").as_deref(), Some("x"));
    }

    #[test]
    fn http_answers_by_length_chunks_or_end() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello and more";
        assert_eq!(parse_http_response(r), Ok((200, b"hello".to_vec())));
        let r = b"HTTP/1.0 500 Internal Server Error\r\n\r\nfault";
        assert_eq!(parse_http_response(r), Ok((500, b"fault".to_vec())));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(r), Ok((200, b"hello world".to_vec())));
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_http_response(b"SSH-2.0-x\r\n\r\n").is_err());
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\nab";
        assert!(parse_http_response(r).is_err());
        let full = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for n in 0..full.len() {
            let _ = parse_http_response(&full[..n]);
        }
    }
}
