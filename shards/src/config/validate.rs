//! [`Config::validate`]: every limit against its hard ceiling, once.

use futures_rustls::pki_types::CertificateDer;

use super::{Config, ConfigError, DataCores, ValidConfig, HTTP_CONNECTIONS_RESERVED_MIN};
use crate::net::parse_pem_roots;

fn invalid(key: &'static str, value: impl std::fmt::Display, why: &str) -> ConfigError {
    ConfigError::Invalid { key, value: value.to_string(), why: why.to_owned() }
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &'static str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(invalid(key, v, &format!("must be between {lo} and {hi}")));
    }
    Ok(())
}

impl Config {
    /// Checks every limit against its hard ceiling.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        let c = &self.connections;
        in_range("connections.tokens_per_conn_max", c.tokens_per_conn_max, 1, 500)?;
        in_range(
            "connections.tokens_per_conn_target",
            c.tokens_per_conn_target,
            1,
            c.tokens_per_conn_max,
        )?;
        in_range("connections.ids_per_frame_max", c.ids_per_frame_max, 1, 500)?;
        in_range("connections.ping_interval_ms", c.ping_interval_ms, 100, 60_000)?;
        in_range("connections.pong_timeout_ms", c.pong_timeout_ms, c.ping_interval_ms, 600_000)?;
        in_range("connections.data_silence_ms", c.data_silence_ms, 1_000, 3_600_000)?;
        in_range("connections.first_book_timeout_ms", c.first_book_timeout_ms, 100, 600_000)?;
        in_range("connections.reconnect_delay_ms_min", c.reconnect_delay_ms_min, 1, 60_000)?;
        in_range(
            "connections.reconnect_delay_ms_max",
            c.reconnect_delay_ms_max,
            c.reconnect_delay_ms_min,
            600_000,
        )?;
        in_range("integrity.failed_checks_max", self.integrity.failed_checks_max, 1, 1000)?;
        let d = &self.discovery;
        in_range("discovery.interval_ms", d.interval_ms, 1_000, 86_400_000)?;
        in_range("discovery.page_limit", d.page_limit, 1, 100)?;
        in_range("discovery.requests_per_10s_max", d.requests_per_10s_max, 1, 300)?;
        in_range("discovery.markets_max", d.markets_max, 1, 1_000_000)?;
        in_range("discovery.absent_runs_max", d.absent_runs_max, 1, 1000)?;
        in_range("discovery.close_pct_max", d.close_pct_max, 0, 100)?;
        let i = &self.integrity;
        in_range("integrity.stale_after_ms", i.stale_after_ms, 100, 3_600_000)?;
        in_range("integrity.run_quiet_ms", i.run_quiet_ms, 1, 60_000)?;
        in_range("integrity.check_states_after_run_max", i.check_states_after_run_max, 0, 64)?;
        in_range("integrity.check_window_ms", i.check_window_ms, 1, 600_000)?;
        in_range("integrity.divergence_ms_min", i.divergence_ms_min, 0, 3_600_000)?;
        in_range("api.ready_books_live_pct_min", self.api.ready_books_live_pct_min, 0, 100)?;
        in_range("api.ws_idle_ms", self.api.ws_idle_ms, 100, 3_600_000)?;
        in_range("api.ws_ping_ms", self.api.ws_ping_ms, 100, 600_000)?;
        in_range("api.ws_ops_per_s_max", self.api.ws_ops_per_s_max, 1, 10_000)?;
        let l = &self.lifecycle;
        in_range("lifecycle.recycle_pollution_pct", l.recycle_pollution_pct, 1, 100)?;
        in_range("lifecycle.recycle_concurrent_max", l.recycle_concurrent_max, 1, 64)?;
        in_range("lifecycle.handoff_timeout_ms", l.handoff_timeout_ms, 100, 600_000)?;
        in_range("lifecycle.recycle_check_ms", l.recycle_check_ms, 100, 3_600_000)?;
        in_range("layout.io_memory_kib", self.layout.io_memory_kib, 64, 1 << 20)?;
        if let DataCores::List(cores) = &self.layout.data_cores {
            if cores.is_empty() {
                return Err(invalid(
                    "layout.data_cores",
                    "[]",
                    "needs at least one core or \"auto\"",
                ));
            }
            in_range("layout.data_cores (count)", cores.len(), 1, 256)?;
        }
        self.api.listen.parse::<std::net::SocketAddr>().map_err(|e| {
            invalid("api.listen", &self.api.listen, &format!("not an address:port: {e}"))
        })?;
        in_range("api.ws_client_buffer_max", self.api.ws_client_buffer_max, 1, 1 << 20)?;
        in_range("api.requests_per_s_max", self.api.requests_per_s_max, 1, 1_000_000)?;
        self.validate_exposure()?;
        let sel = &self.selection;
        for (key, v) in [
            ("selection.volume_min", sel.volume_min),
            ("selection.liquidity_min", sel.liquidity_min),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(key, v, "must be a finite number >= 0"));
            }
        }
        in_range("selection.tag_ids (count)", sel.tag_ids.len(), 0, 100)?;
        if let Some(p) = &sel.partition {
            p.parse::<polybook::registry::Partition>()
                .map_err(|e| invalid("selection.partition", p, &e.to_string()))?;
        }
        self.validate_nats()?;
        for (key, url, schemes) in [
            ("endpoints.gamma_url", &self.endpoints.gamma_url, ["http://", "https://"]),
            ("endpoints.ws_url", &self.endpoints.ws_url, ["ws://", "wss://"]),
        ] {
            if !schemes.iter().any(|s| url.starts_with(s)) {
                return Err(invalid(
                    key,
                    url,
                    &format!("must start with {}", schemes.join(" or ")),
                ));
            }
        }
        let tls_roots = match &self.endpoints.tls_roots_file {
            None => Vec::new(),
            Some(path) => read_tls_roots(path)?,
        };
        Ok(ValidConfig { config: self, tls_roots })
    }
}

impl Config {
    /// `[publish.nats]`: a subject prefix NATS accepts, bounded queues, one way to log in.
    fn validate_nats(&self) -> Result<(), ConfigError> {
        let n = &self.publish.nats;
        if let Some(url) = &n.url {
            let ok = !url.is_empty()
                && url.split(',').all(|u| {
                    let u = u.trim();
                    !u.is_empty() && !u.contains(char::is_whitespace)
                });
            if !ok {
                return Err(invalid(
                    "publish.nats.url",
                    url,
                    "must be a URL list like nats://host:4222",
                ));
            }
        }
        let p = &n.subject_prefix;
        let token_ok = |t: &str| {
            !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic() && !b"*>.".contains(&b))
        };
        if p.len() > 128 || !p.split('.').all(token_ok) {
            return Err(invalid(
                "publish.nats.subject_prefix",
                p,
                "must be dot-separated printable tokens without spaces, '*' or '>' (at most 128)",
            ));
        }
        in_range("publish.nats.snapshot_interval_ms", n.snapshot_interval_ms, 10, 3_600_000)?;
        in_range("publish.nats.channel_capacity", n.channel_capacity, 16, 1 << 22)?;
        let logins = [n.creds_file.is_some(), n.user.is_some(), n.token.is_some()];
        if logins.iter().filter(|&&x| x).count() > 1 {
            return Err(invalid(
                "publish.nats",
                "creds_file/user/token",
                "give at most one of creds_file, user (+ password), token",
            ));
        }
        if n.password.is_some() && n.user.is_none() {
            return Err(invalid("publish.nats.password", "<redacted>", "needs publish.nats.user"));
        }
        Ok(())
    }

    /// `[api]` keys that decide who may reach the API and how many may hold it.
    fn validate_exposure(&self) -> Result<(), ConfigError> {
        let api = &self.api;
        // Checked in `validate` before this runs.
        let listen: std::net::SocketAddr =
            api.listen.parse().map_err(|_| invalid("api.listen", &api.listen, "not an address"))?;
        match &api.admin_token {
            Some(t) => {
                let t = t.expose();
                let printable = t.bytes().all(|b| b.is_ascii_graphic());
                if !(16..=512).contains(&t.len()) || !printable {
                    return Err(invalid(
                        "api.admin_token",
                        "<redacted>",
                        "must be 16 to 512 printable ASCII characters without spaces",
                    ));
                }
            }
            None if !listen.ip().is_loopback() => {
                return Err(invalid(
                    "api.listen",
                    &api.listen,
                    "is not a loopback address: set api.admin_token, or the admin endpoints \
                     are only as safe as the network (behind a reverse proxy every request \
                     looks local)",
                ));
            }
            None => {}
        }
        in_range("api.allowed_origins (count)", api.allowed_origins.len(), 0, 64)?;
        for o in &api.allowed_origins {
            crate::net::Origin::parse(o).map_err(|why| {
                invalid(
                    "api.allowed_origins",
                    o,
                    &format!("{why} (e.g. \"https://dash.example.com\")"),
                )
            })?;
        }
        in_range("api.connections_max", api.connections_max, 16, 65_536)?;
        in_range(
            "api.ws_connections_max",
            api.ws_connections_limit(),
            1,
            api.connections_max - HTTP_CONNECTIONS_RESERVED_MIN,
        )?;
        Ok(())
    }
}

fn read_tls_roots(path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let key = "endpoints.tls_roots_file";
    let pem = std::fs::read(path).map_err(|e| invalid(key, path, &format!("cannot read: {e}")))?;
    parse_pem_roots(&pem).map_err(|why| invalid(key, path, &why))
}
