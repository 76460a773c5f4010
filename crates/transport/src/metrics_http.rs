//! The HTTP side of `/metrics`, for the node and the cloud alike: one
//! request line in, one whole response out, then the connection closes.
//! Only `GET /metrics` is served, and the body is made only for it.
//!
//! [`respond`] is the pure part (a request line in, the response out);
//! [`serve`] is the accept loop around it, with a bound on the scrapes
//! served at once and on how long each may take.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The content type of the Prometheus / OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Scrapes served at once; the accept loop waits for one to finish
/// beyond that.
const MAX_SCRAPES: usize = 8;

/// How long a client may take to send its request line, and how long of
/// it is read.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_REQUEST_LINE: u64 = 2048;

/// How long one scrape may take in all (reading, rendering, writing).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics` on `listener` until the task is dropped. `render` is
/// called for each `GET /metrics` and gives the body, or `None` when the
/// metrics cannot be had now (503).
pub async fn serve<F, Fut>(listener: TcpListener, render: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<String>> + Send + 'static,
{
    let render = Arc::new(render);
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        // The semaphore is never closed.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: try again, but not in a spin.
                tracing::debug!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, answer(stream, &*render)).await;
            drop(slot);
        });
    }
}

/// Reads one request line from `stream` and writes the response.
async fn answer<Fut>(mut stream: TcpStream, render: impl FnOnce() -> Fut)
where
    Fut: Future<Output = Option<String>>,
{
    let (r, mut w) = stream.split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        BufReader::new(r.take(MAX_REQUEST_LINE)).read_line(&mut line),
    )
    .await;
    if !matches!(read, Ok(Ok(_))) {
        return;
    }
    let body = if wants_metrics(&line) {
        render().await
    } else {
        None
    };
    let response = respond(&line, || body);
    let _ = w.write_all(response.as_bytes()).await;
    let _ = w.shutdown().await;
}

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
    use std::sync::atomic::{AtomicUsize, Ordering};

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

    async fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn the_loop_renders_for_each_scrape_and_for_nothing_else() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let rendered = Arc::new(AtomicUsize::new(0));
        let counter = rendered.clone();
        let server = tokio::spawn(serve(listener, move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Some(format!("scrapes_total {n}\n")) }
        }));
        for n in 1..=3 {
            let out = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
            assert!(
                out.ends_with(&format!("\r\n\r\nscrapes_total {n}\n")),
                "{out}"
            );
        }
        let out = get(addr, "GET /favicon.ico HTTP/1.1\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
        // A client that says nothing and leaves costs nothing.
        drop(TcpStream::connect(addr).await.expect("connect"));
        let out = get(addr, "GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(out.ends_with("scrapes_total 4\n"), "{out}");
        assert_eq!(rendered.load(Ordering::SeqCst), 4);
        server.abort();
    }

    #[tokio::test]
    async fn metrics_that_cannot_be_had_are_a_503() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, || async { None }));
        let out = get(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        server.abort();
    }
}
