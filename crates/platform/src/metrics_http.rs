//! The HTTP side of `/metrics` (node and cloud): one request line in, one
//! whole response out. Only `GET /metrics` is served; the body is made
//! only for it.

/// The content type of the Prometheus / OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The response to `request_line`: `render` (asked for only on `GET
/// /metrics`) gives the body, or `None` when the metrics cannot be had
/// (503).
pub fn respond(request_line: &str, render: impl FnOnce() -> Option<String>) -> String {
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (code, kind, body) = match (method, path) {
        ("GET", "/metrics") => match render() {
            Some(body) => ("200 OK", CONTENT_TYPE, body),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "the metrics are not available now\n".to_owned(),
            ),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "only /metrics is here\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    format!(
        "HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Whether `request_line` asks for the metrics (so the caller gathers them).
pub fn wants_metrics(request_line: &str) -> bool {
    request_line.starts_with("GET /metrics ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served_and_rendered() {
        let ok = respond("GET /metrics HTTP/1.1", || Some("a 1\n".into()));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(body, "a 1\n");
        let mut asked = false;
        let nf = respond("GET / HTTP/1.1", || {
            asked = true;
            None
        });
        assert!(nf.starts_with("HTTP/1.1 404"));
        assert!(!asked, "the body is made only for /metrics");
        assert!(respond("POST /metrics HTTP/1.1", || None).starts_with("HTTP/1.1 405"));
        assert!(respond("", || None).starts_with("HTTP/1.1 405"));
        assert!(respond("GET /metrics HTTP/1.1", || None).starts_with("HTTP/1.1 503"));
        assert!(wants_metrics("GET /metrics HTTP/1.0") && !wants_metrics("GET /metricsx HTTP/1.0"));
    }
}
