//! A quick loopback burst per transport, printed, not asserted:
//! `cargo test -p cyphonic-transport --release --test throughput -- --nocapture`
//! (`CYPHONIC_BURST=<datagrams>` to change the size; default 20 000).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use cyphonic_transport::{Hub, SendError, Transport, FAST_HEADER_LEN};

const LEN: usize = 1400;

async fn burst(transport: Transport, fast: bool) {
    let count: usize = std::env::var("CYPHONIC_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let pki = TestPki::new("cyphonic.test");
    let server = Arc::new(
        Hub::server(
            pki.server(),
            vec![any_port("127.0.0.1")],
            vec![any_port("127.0.0.1")],
            true,
        )
        .await
        .unwrap(),
    );
    let client = Hub::new(pki.node("n1.cyphonic.test"), None, None)
        .await
        .unwrap();
    let to = match transport {
        Transport::Quic => server.quic_listen_addrs()[0],
        _ => server.tcp_listen_addrs()[0],
    };
    // Establish the leg first so the handshake is not timed.
    client.send(transport, to, numbered(0, LEN)).unwrap();
    assert_eq!(recv_n(&server, 1, Duration::from_secs(5)).await.len(), 1);

    let receiver = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut got = 0usize;
            let mut batch = Vec::with_capacity(256);
            let mut last = Instant::now();
            while got < count {
                batch.clear();
                match tokio::time::timeout(
                    Duration::from_secs(1),
                    server.recv_many(&mut batch, 256),
                )
                .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got += n;
                        last = Instant::now();
                    }
                }
            }
            (got, last)
        })
    };

    let start = Instant::now();
    let mut full = 0u64;
    let datagram = numbered(1, LEN);
    if fast {
        // The QUIC leg's fast path, in GSO trains of 32, from another
        // thread as the data plane sends; unpaced, so what the receiver
        // cannot take in time the kernel drops (the figure says how many
        // arrived).
        let deadline = Instant::now() + Duration::from_secs(5);
        let route = loop {
            if let Some(r) = client.fast_route(to) {
                break r;
            }
            assert!(Instant::now() < deadline, "no fast route");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        std::thread::spawn(move || {
            let seg = FAST_HEADER_LEN + LEN;
            let mut train = Vec::new();
            for _ in 0..32 {
                train.extend_from_slice(route.header());
                train.extend_from_slice(&numbered(1, LEN));
            }
            for _ in 0..count / 32 {
                route.send(&train, seg).unwrap();
            }
        })
        .join()
        .unwrap();
    }
    for _ in 0..if fast { 0 } else { count } {
        // Back off on a full queue: this measures the leg, not the drops.
        loop {
            match client.send(transport, to, datagram.clone()) {
                Ok(()) => break,
                Err(SendError::QueueFull) => {
                    full += 1;
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    let (got, last) = receiver.await.unwrap();
    let secs = last.duration_since(start).as_secs_f64();
    let mbit = (got * LEN * 8) as f64 / secs / 1e6;
    println!(
        "{transport}{} loopback burst: {got}/{count} datagrams of {LEN} bytes in {:.3} s = {:.0} Mbit/s, {:.0} datagrams/s ({full} full-queue retries)",
        if fast { " fast path" } else { "" },
        secs,
        mbit,
        got as f64 / secs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_burst() {
    burst(Transport::Quic, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_fast_path_burst() {
    burst(Transport::Quic, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_burst() {
    burst(Transport::Tcp, false).await;
}
