//! `config.toml`: parsed with unknown keys rejected, then validated once into [`ValidConfig`],
//! which the rest of the runtime takes as proof that every limit is in range.

use futures_rustls::pki_types::CertificateDer;
use serde::Deserialize;
use std::path::Path;

use crate::net::parse_pem_roots;

/// Everything that can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid TOML in {path}: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("{key} = {value}: {why}")]
    Invalid { key: &'static str, value: String, why: String },
}

#[derive(Debug, Clone, Deserialize, Default, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub endpoints: Endpoints,
    pub layout: Layout,
    pub connections: Connections,
    pub integrity: Integrity,
    pub discovery: Discovery,
    pub lifecycle: Lifecycle,
    pub selection: Selection,
    pub api: Api,
    pub log: Log,
}

/// Which markets to carry. Empty lists and zero thresholds select every active market.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Selection {
    /// Only these markets (condition ids), if any are given (united with slugs and tokens).
    pub condition_ids: Vec<String>,
    pub slugs: Vec<String>,
    /// Markets holding any of these outcome tokens.
    pub token_ids: Vec<String>,
    /// Gamma tag ids, passed to the listing as `tag_id` (one request series per tag).
    pub tag_ids: Vec<u64>,
    /// Minimum 24/7 volume and liquidity in USDC (Gamma's `volumeNum` / `liquidityNum`).
    pub volume_min: f64,
    pub liquidity_min: f64,
}

impl From<&Selection> for polybook::registry::SelectionRules {
    fn from(s: &Selection) -> Self {
        polybook::registry::SelectionRules {
            condition_ids: s.condition_ids.clone(),
            slugs: s.slugs.clone(),
            token_ids: s.token_ids.clone(),
            volume_min: s.volume_min,
            liquidity_min: s.liquidity_min,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Endpoints {
    pub gamma_url: String,
    pub clob_url: String,
    pub ws_url: String,
    /// PEM file of extra trusted roots (a private CA, a test venue's self-signed certificate),
    /// trusted besides the bundled webpki roots for https and wss. Relative to the working
    /// directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_roots_file: Option<String>,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            gamma_url: "https://gamma-api.polymarket.com".into(),
            clob_url: "https://clob.polymarket.com".into(),
            ws_url: "wss://ws-subscriptions-clob.polymarket.com/ws/market".into(),
            tls_roots_file: None,
        }
    }
}

/// `"auto"` or an explicit list of CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum DataCores {
    Auto(AutoWord),
    List(Vec<usize>),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoWord {
    Auto,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Layout {
    pub control_core: usize,
    pub data_cores: DataCores,
    pub io_memory_kib: usize,
}

impl Default for Layout {
    fn default() -> Self {
        Layout { control_core: 0, data_cores: DataCores::Auto(AutoWord::Auto), io_memory_kib: 256 }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Connections {
    pub tokens_per_conn_target: usize,
    pub tokens_per_conn_max: usize,
    pub ids_per_frame_max: usize,
    pub ping_interval_ms: u64,
    pub pong_timeout_ms: u64,
    pub data_silence_ms: u64,
    pub first_book_timeout_ms: u64,
    pub reconnect_delay_ms_min: u64,
    pub reconnect_delay_ms_max: u64,
    pub dynamic_subscribe: bool,
    pub custom_features: bool,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            tokens_per_conn_target: 400,
            tokens_per_conn_max: 500,
            ids_per_frame_max: 100,
            ping_interval_ms: 10_000,
            pong_timeout_ms: 30_000,
            data_silence_ms: 60_000,
            first_book_timeout_ms: 30_000,
            reconnect_delay_ms_min: 250,
            reconnect_delay_ms_max: 30_000,
            dynamic_subscribe: true,
            custom_features: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Integrity {
    pub verify_hash: bool,
    pub failed_checks_max: u16,
    /// A book whose connection has had no data frame for this long reports `stale`.
    pub stale_after_ms: u64,
    /// Burst-aware checks: a token's same-timestamp run ends at its next later entry or after
    /// this long without one.
    pub run_quiet_ms: u64,
    /// A hash or best bid/ask may match up to this many states after the end of its run.
    pub check_states_after_run_max: u8,
    /// ... or within this long after its run, if no further state comes.
    pub check_window_ms: u64,
    /// Resyncing needs `failed_checks_max` divergent runs spanning at least this long.
    pub divergence_ms_min: u64,
}

impl Default for Integrity {
    fn default() -> Self {
        Integrity {
            verify_hash: true,
            failed_checks_max: 3,
            stale_after_ms: 15_000,
            run_quiet_ms: 250,
            check_states_after_run_max: 3,
            check_window_ms: 1_000,
            divergence_ms_min: 1_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Discovery {
    pub interval_ms: u64,
    pub page_limit: usize,
    pub requests_per_10s_max: u32,
    pub markets_max: usize,
    /// A market is closed only after missing from this many consecutive complete listings.
    pub absent_runs_max: u32,
    /// A listing that would close more than this share (%) of active markets is refused.
    pub close_pct_max: u8,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            interval_ms: 60_000,
            page_limit: 100,
            requests_per_10s_max: 250,
            markets_max: 200_000,
            absent_runs_max: 3,
            close_pct_max: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lifecycle {
    pub resolved_grace_ms: u64,
    pub recycle_pollution_pct: u8,
    pub recycle_age_ms: u64,
    pub recycle_min_age_ms: u64,
    pub recycle_concurrent_max: usize,
    /// Longest a recycle waits for the new socket to take every book over before closing the
    /// old one anyway (books not yet moved resync).
    pub handoff_timeout_ms: u64,
    /// How often control checks connections for recycling (age, pollution).
    pub recycle_check_ms: u64,
    /// A market past its end date by this much, neither resolved nor closed, is expired.
    pub expire_after_end_ms: u64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            resolved_grace_ms: 3_600_000,
            recycle_pollution_pct: 30,
            recycle_age_ms: 86_400_000,
            recycle_min_age_ms: 300_000,
            recycle_concurrent_max: 2,
            handoff_timeout_ms: 30_000,
            recycle_check_ms: 10_000,
            expire_after_end_ms: 7 * 86_400_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    pub listen: String,
    pub ws_client_buffer_max: usize,
    /// HTTP requests per second per client address; more get 429.
    pub requests_per_s_max: u32,
    /// `/ready` fails while fewer than this share (%) of tracked books are live.
    pub ready_books_live_pct_min: u8,
    /// A `/ws` client with no subscription is closed after this long.
    pub ws_idle_ms: u64,
    /// Subscribed `/ws` clients are pinged this often; one silent for 3 pings is closed.
    pub ws_ping_ms: u64,
    /// subscribe/unsubscribe operations per second per `/ws` client.
    pub ws_ops_per_s_max: u32,
    // Exposure to other hosts and to browsers (issue 12).
    /// `Authorization: Bearer` token for everything under `/admin`; without one, admin is
    /// loopback only and `listen` must be a loopback address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<Secret>,
    /// Origins (`scheme://host[:port]`) whose pages may call the API and whose names may
    /// appear in `Host`, besides the listen address, localhost, 127.0.0.1 and [::1].
    pub allowed_origins: Vec<String>,
    /// Connections (HTTP and WebSocket) served at once.
    pub connections_max: usize,
    /// Of those, upgraded `/ws` streams at once; more are refused with 503. Absent: 3/4 of
    /// `connections_max`, so a quarter always stays for plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_connections_max: Option<usize>,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            listen: "127.0.0.1:8080".into(),
            ws_client_buffer_max: 1024,
            requests_per_s_max: 1000,
            ready_books_live_pct_min: 95,
            ws_idle_ms: 30_000,
            ws_ping_ms: 15_000,
            ws_ops_per_s_max: 20,
            admin_token: None,
            allowed_origins: Vec::new(),
            connections_max: 4096,
            ws_connections_max: None,
        }
    }
}

impl Api {
    /// `ws_connections_max`, or its default.
    pub fn ws_connections_limit(&self) -> usize {
        self.ws_connections_max.unwrap_or(self.connections_max - self.connections_max / 4)
    }
}

/// Connections that always stay for plain HTTP, however `api.ws_connections_max` is set.
pub const HTTP_CONNECTIONS_RESERVED_MIN: usize = 4;

/// A secret from the configuration: never printed (`Debug`, `check-config`, error messages).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for comparison only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: String,
    /// JSON log lines instead of the human format.
    pub json: bool,
    /// A progress line (markets, books live, frames/s) this often; 0 turns it off.
    pub progress_interval_ms: u64,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: "info".into(), json: false, progress_interval_ms: 5000 }
    }
}

/// A configuration whose every limit was checked; only [`Config::validate`] makes one.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    config: Config,
    /// The certificates of `endpoints.tls_roots_file`, read and checked once.
    tls_roots: Vec<CertificateDer<'static>>,
}

impl std::ops::Deref for ValidConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

impl ValidConfig {
    /// Extra trusted roots from `endpoints.tls_roots_file` (empty without one).
    pub fn tls_roots(&self) -> &[CertificateDer<'static>] {
        &self.tls_roots
    }
}

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
    pub fn from_toml(text: &str, path: &str) -> Result<Config, ConfigError> {
        toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), source: Box::new(e) })
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: p.clone(), source: e })?;
        Config::from_toml(&text, &p)
    }

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
        for (key, url, schemes) in [
            ("endpoints.gamma_url", &self.endpoints.gamma_url, ["http://", "https://"]),
            ("endpoints.clob_url", &self.endpoints.clob_url, ["http://", "https://"]),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_config_toml_parses_and_equals_defaults() {
        let text = include_str!("../../config.toml");
        let parsed = Config::from_toml(text, "config.toml").map_err(|e| e.to_string());
        let parsed = parsed.and_then(|c| c.validate().map_err(|e| e.to_string()));
        let Ok(parsed) = parsed else { panic!("{parsed:?}") };
        let a = toml::to_string(&*parsed).unwrap_or_default();
        let b = toml::to_string(&Config::default()).unwrap_or_default();
        assert_eq!(a, b, "config.toml documents the defaults");
        assert!(!a.is_empty());
    }

    #[test]
    fn unknown_key_is_rejected() {
        let r = Config::from_toml("[connections]\ntokens_per_con_max = 5\n", "x");
        assert!(matches!(r, Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn out_of_range_limits_are_rejected_with_the_key() {
        for (text, key) in [
            ("[connections]\ntokens_per_conn_max = 900\n", "connections.tokens_per_conn_max"),
            ("[layout]\ndata_cores = []\n", "layout.data_cores"),
            ("[api]\nlisten = \"nowhere\"\n", "api.listen"),
            ("[endpoints]\nws_url = \"http://x\"\n", "endpoints.ws_url"),
            ("[api]\nlisten = \"0.0.0.0:8080\"\n", "api.listen"),
            ("[api]\nallowed_origins = [\"*\"]\n", "api.allowed_origins"),
            ("[api]\nallowed_origins = [\"https://x.example/app\"]\n", "api.allowed_origins"),
            ("[api]\nallowed_origins = [\"ftp://x.example\"]\n", "api.allowed_origins"),
            ("[api]\nconnections_max = 1000000\n", "api.connections_max"),
            ("[api]\nconnections_max = 64\nws_connections_max = 61\n", "api.ws_connections_max"),
            ("[api]\nws_connections_max = 0\n", "api.ws_connections_max"),
        ] {
            let r = Config::from_toml(text, "x").and_then(Config::validate);
            match r {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{text}: {other:?}"),
            }
        }
        for ok in [
            "[layout]\ndata_cores = [1, 2]\n",
            "[api]\nconnections_max = 64\n",
            "[api]\nallowed_origins = [\"https://dash.example.com\", \"http://[::1]:9000\"]\n",
            "[api]\nlisten = \"0.0.0.0:8080\"\nadmin_token = \"0123456789abcdef\"\n",
        ] {
            let r = Config::from_toml(ok, "x").and_then(Config::validate);
            assert!(r.is_ok(), "{ok}: {r:?}");
        }
        let c = Config::from_toml("[api]\nconnections_max = 64\n", "x").map(|c| c.api);
        assert_eq!(c.map(|a| a.ws_connections_limit()).ok(), Some(48));
    }

    #[test]
    fn tls_roots_file_is_read_at_validation_with_clear_errors() {
        let dir = std::env::temp_dir().join(format!("polybook-roots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let id = crate::net::TlsIdentity::self_signed_localhost().unwrap_or_else(|e| panic!("{e}"));
        let good = dir.join("good.pem");
        let junk = dir.join("junk.pem");
        std::fs::write(&good, id.cert_pem()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&junk, "not a certificate\n").unwrap_or_else(|e| panic!("{e}"));
        let with = |path: &Path| {
            let text = format!("[endpoints]\ntls_roots_file = {:?}\n", path.display().to_string());
            Config::from_toml(&text, "x").and_then(Config::validate)
        };
        let valid = with(&good).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(valid.tls_roots(), [id.cert_der().clone()]);
        assert!(Config::default().validate().is_ok_and(|c| c.tls_roots().is_empty()));
        for (path, why) in [(junk, "no PEM CERTIFICATE"), (dir.join("missing.pem"), "cannot read")]
        {
            match with(&path) {
                Err(e @ ConfigError::Invalid { key: "endpoints.tls_roots_file", .. }) => {
                    assert!(e.to_string().contains(why), "{e}");
                }
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
