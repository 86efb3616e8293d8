//! Polling with a deadline: tests and the harness wait for states, never for fixed times.

use std::time::{Duration, Instant};

/// `f` never said yes within the limit; `last` is its last complaint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timed out waiting for {what}: {last}")]
pub struct TimedOut {
    pub what: String,
    pub last: String,
}

/// Calls `f` every `every` until it returns `Ok`, or gives up after `limit` with its last
/// complaint.
pub fn poll_until<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, TimedOut> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(last) if start.elapsed() > limit => {
                return Err(TimedOut { what: what.to_owned(), last })
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_until_returns_the_value_or_the_last_complaint() {
        let mut n = 0;
        let r = poll_until("three", Duration::from_secs(5), Duration::ZERO, || {
            n += 1;
            if n == 3 {
                Ok(n)
            } else {
                Err(format!("at {n}"))
            }
        });
        assert_eq!(r, Ok(3));
        let r: Result<(), _> =
            poll_until("never", Duration::ZERO, Duration::ZERO, || Err("no".to_owned()));
        assert_eq!(r.map_err(|e| e.to_string()), Err("timed out waiting for never: no".into()));
    }
}
