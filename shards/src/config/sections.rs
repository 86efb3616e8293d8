//! One struct per `config.toml` table, each with its defaults.

use serde::Deserialize;

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
    /// `"I/N"`: carry only the markets whose stable routing hash (`routing::partition_for`)
    /// mod N is I, so N instances with I = 0..N-1 carry every market exactly once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
}

impl Selection {
    /// `partition`, parsed (`validate` rejects a bad one, so a `ValidConfig`'s is never lost).
    pub fn partition(&self) -> Option<polybook::registry::Partition> {
        self.partition.as_deref().and_then(|p| p.parse().ok())
    }
}

impl From<&Selection> for polybook::registry::SelectionRules {
    fn from(s: &Selection) -> Self {
        polybook::registry::SelectionRules {
            condition_ids: s.condition_ids.clone(),
            slugs: s.slugs.clone(),
            token_ids: s.token_ids.clone(),
            volume_min: s.volume_min,
            liquidity_min: s.liquidity_min,
            partition: s.partition(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Endpoints {
    pub gamma_url: String,
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

/// `[publish]`: where books go besides the API.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Publish {
    pub nats: Nats,
}

/// `[publish.nats]`: every change of every book to a NATS server (off without `url`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nats {
    /// `nats://host:port` (comma-separated for a cluster); absent: no publishing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Subjects are `{prefix}.delta|snapshot|bbo.{token_id}` and `{prefix}.trades.{market}`.
    pub subject_prefix: String,
    /// A `.creds` file (JWT + NKey seed), read at connect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// A changing book's snapshot goes out at most this often (and on every replacement).
    pub snapshot_interval_ms: u64,
    /// Hand-overs (a message, or a batch of what a burst of frames produced) each data shard
    /// may have waiting for the publisher; beyond, they are dropped and counted, and the
    /// token's next message is a snapshot.
    pub channel_capacity: usize,
    /// `/ready` answers 503 while NATS is not connected (default: NATS only shows in `/stats`).
    pub required_for_ready: bool,
}

impl Default for Nats {
    fn default() -> Self {
        Nats {
            url: None,
            subject_prefix: "polybook".into(),
            creds_file: None,
            user: None,
            password: None,
            token: None,
            snapshot_interval_ms: 1000,
            channel_capacity: 1 << 16,
            required_for_ready: false,
        }
    }
}
