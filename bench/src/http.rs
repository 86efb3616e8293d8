//! Blocking HTTP to the simulator and the engine (plain http on 127.0.0.1), and polling with
//! a deadline; shared by both load harnesses.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

#[derive(Clone)]
pub struct Http {
    pub agent: ureq::Agent,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Http {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        Http { agent }
    }

    /// GET, retrying (a few times, after a pause) when the API says 429.
    pub fn get(&self, url: &str) -> Result<(u16, Value)> {
        let mut tries = 0;
        let mut r = loop {
            let r = self.agent.get(url).call().with_context(|| format!("GET {url}"))?;
            if r.status().as_u16() != 429 || tries == 5 {
                break r;
            }
            tries += 1;
            std::thread::sleep(Duration::from_millis(250));
        };
        let status = r.status().as_u16();
        let body = r
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .with_context(|| format!("GET {url}: body"))?;
        Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }

    pub fn get_ok(&self, url: &str) -> Result<Value> {
        match self.get(url)? {
            (200, v) => Ok(v),
            (s, v) => bail!("GET {url}: HTTP {s}: {v}"),
        }
    }

    pub fn post(&self, url: &str) -> Result<()> {
        let r = self.agent.post(url).send_empty().with_context(|| format!("POST {url}"))?;
        match r.status().as_u16() {
            200 => Ok(()),
            s => bail!("POST {url}: HTTP {s}"),
        }
    }
}

pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Polls `f` every 100 ms until it returns Ok, or fails with its last complaint.
pub fn wait_for<T>(what: &str, limit: Duration, f: impl FnMut() -> Result<T, String>) -> Result<T> {
    Ok(polybook_testkit::poll_until(what, limit, Duration::from_millis(100), f)?)
}
