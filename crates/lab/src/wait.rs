//! Polling for a condition with a deadline.

use std::time::{Duration, Instant};

use anyhow::bail;

const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `f` every 50 ms until it returns `Ok(Some(value))`, and returns
/// that value. `Ok(None)` means "not yet"; an error also means "not yet"
/// but is remembered, so the timeout error says what last went wrong:
/// `timed out after 5s waiting for <what>: <last error>`.
/// `f` runs at least once, even with a zero timeout.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut last_error: Option<anyhow::Error> = None;
    loop {
        match f() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            let secs = timeout.as_secs_f64();
            match last_error {
                Some(e) => bail!("timed out after {secs}s waiting for {what}: {e:#}"),
                None => bail!("timed out after {secs}s waiting for {what}"),
            }
        }
        std::thread::sleep(POLL_INTERVAL.min(timeout - elapsed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    #[test]
    fn returns_the_first_value() {
        let mut calls = 0;
        let v = wait_until("three calls", Duration::from_secs(5), || {
            calls += 1;
            Ok((calls == 3).then_some(calls * 10))
        })
        .unwrap();
        assert_eq!(v, 30);
    }

    #[test]
    fn times_out_with_the_last_error() {
        let mut calls = 0;
        let start = Instant::now();
        let err = wait_until::<()>("the impossible", Duration::from_millis(200), || {
            calls += 1;
            Err(anyhow!("attempt {calls} failed"))
        })
        .unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(200));
        let msg = err.to_string();
        assert!(
            msg.starts_with("timed out after 0.2s waiting for the impossible: attempt "),
            "{msg}"
        );
        assert!(msg.ends_with(&format!("attempt {calls} failed")), "{msg}");
    }

    #[test]
    fn times_out_without_an_error() {
        let err = wait_until::<()>("nothing", Duration::ZERO, || Ok(None)).unwrap_err();
        assert_eq!(err.to_string(), "timed out after 0s waiting for nothing");
    }
}
