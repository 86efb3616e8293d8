//! The thread-per-core engine: a control shard and N data shards, each a glommio executor
//! pinned as `[layout]` says, connected by bounded channels (see [`mesh`]).

pub mod clock;
pub mod control;
pub mod data;
pub mod discovery;
pub mod mesh;
pub mod nats;
pub mod record;
pub mod stream;
pub mod supervise;
pub mod uring;

use std::net::SocketAddr;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use polybook::policy::Backoff;
use polybook::StoreConfig;

use crate::config::{DataCores, ValidConfig};
use crate::net::{tls_config_with_extra_roots, ConnectOptions};

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("layout: {0}")]
    Layout(String),
    #[error("cannot start executor {name} on CPU {cpu}: {reason} (check `ulimit -l` / memlock, or lower layout.io_memory_kib)")]
    Executor { name: String, cpu: usize, reason: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("API: {0}")]
    Api(String),
    /// Found before any executor starts (see `uring`).
    #[error(transparent)]
    IoUring(uring::IoUringUnavailable),
    #[error("NATS publisher: {0}")]
    Nats(String),
}

/// CPUs for the control shard and each data shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub control: usize,
    pub data: Vec<usize>,
}

/// Resolves `[layout]` against the machine's CPUs, with clear errors for impossible layouts.
pub fn resolve_layout(cfg: &ValidConfig, cpus: usize) -> Result<Layout, EngineError> {
    let l = &cfg.layout;
    if l.control_core >= cpus {
        return Err(EngineError::Layout(format!(
            "control_core = {} but this machine has CPUs 0..{}",
            l.control_core,
            cpus.saturating_sub(1)
        )));
    }
    let data = match &l.data_cores {
        DataCores::Auto(_) => (0..cpus).collect(),
        DataCores::List(list) => {
            if let Some(bad) = list.iter().find(|&&c| c >= cpus) {
                return Err(EngineError::Layout(format!(
                    "data_cores names CPU {bad} but this machine has CPUs 0..{}",
                    cpus.saturating_sub(1)
                )));
            }
            list.clone()
        }
    };
    Ok(Layout { control: l.control_core, data })
}

/// A running engine.
pub struct EngineHandle {
    api_addr: SocketAddr,
    stop: flume::Sender<()>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    supervisor: supervise::Supervisor,
    failures: flume::Receiver<supervise::Failure>,
    publisher: Option<nats::Publisher>,
}

impl EngineHandle {
    /// Where the HTTP API listens.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The first engine thread that died, if one did (see [`supervise`]: a death is fatal).
    pub fn failure(&self) -> Option<supervise::Failure> {
        self.supervisor.first_failure()
    }

    /// Failures as they happen: the binary selects on this beside its signals and exits
    /// non-zero on the first.
    pub fn failures(&self) -> &flume::Receiver<supervise::Failure> {
        &self.failures
    }

    /// Stops every shard and waits for their threads.
    pub fn stop(self) {
        let _ = self.stop.send(());
        for h in self.executors {
            let _ = h.join();
        }
        // After the shards: it sends what they queued before stopping.
        if let Some(p) = self.publisher {
            p.stop();
        }
    }
}

pub use data::{BookHandler, HandlerFactory};

/// The library entry point: `Engine::builder(config).handler(factory).start()`.
///
/// ```no_run
/// use polybook::store::BookUpdate;
/// use polybook_shards::engine::{BookHandler, Engine};
///
/// struct Tops;
/// impl BookHandler for Tops {
///     fn on_update(&mut self, _update: &BookUpdate, book: &polybook::Book) {
///         if let (Some(b), Some(a)) = (book.best_bid(), book.best_ask()) {
///             println!("{} {} / {}", book.token(), b.price, a.price);
///         }
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = polybook_shards::config::Config::default().validate()?;
/// let engine = Engine::builder(config).handler(|_shard| Tops).start()?;
/// engine.stop();
/// # Ok(())
/// # }
/// ```
pub struct Engine;

impl Engine {
    pub fn builder(config: ValidConfig) -> EngineBuilder {
        EngineBuilder {
            config,
            handler: None,
            record_dir: None,
            record_options: Default::default(),
        }
    }
}

/// Configures an engine before it starts.
pub struct EngineBuilder {
    config: ValidConfig,
    handler: Option<HandlerFactory>,
    record_dir: Option<std::path::PathBuf>,
    record_options: record::RecordOptions,
}

impl EngineBuilder {
    /// `make(shard)` runs once on each data shard's thread; the handler it returns is called
    /// there for every change to that shard's books, with the updated book.
    pub fn handler<H, F>(mut self, make: F) -> Self
    where
        H: BookHandler + 'static,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        self.handler = Some(std::sync::Arc::new(move |shard| Box::new(make(shard))));
        self
    }

    /// Record every raw frame per shard under `dir` (see `record.rs`; `polybook replay DIR`).
    pub fn record(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.record_dir = Some(dir.into());
        self
    }

    /// How recordings are written (compression, rotation, queue); the default compresses.
    pub fn record_options(mut self, options: record::RecordOptions) -> Self {
        self.record_options = options;
        self
    }

    pub fn start(self) -> Result<EngineHandle, EngineError> {
        start_with(&self.config, self.handler, self.record_dir, self.record_options)
    }
}

/// The store settings the engine runs with; the same settings head every recording, so one
/// mapping (`RecordingSettings::store_config`) serves the engine and replay.
pub fn store_config(cfg: &ValidConfig) -> StoreConfig {
    let i = &cfg.integrity;
    polybook::capture::RecordingSettings {
        verify_hash: i.verify_hash,
        failed_checks_max: i.failed_checks_max,
        states_after_run_max: i.check_states_after_run_max,
        run_quiet_ms: i.run_quiet_ms,
        window_ms: i.check_window_ms,
        divergence_ms_min: i.divergence_ms_min,
    }
    .store_config()
}

/// Starts the engine: data shards first, then the control shard (which binds the API and
/// starts discovery). Returns once the API is listening.
/// tungstenite zero-fills its read buffer up to `read_buffer_size` before every read (128 KiB
/// by default): at the venue's real rates, one frame per read, that memset was a fifth of a
/// data shard's CPU. 16 KiB still takes ~25 frames per read when the feed is busy; larger
/// messages (opening dumps) are read in several.
pub const MARKET_READ_BUFFER: usize = 16 << 10;

fn market_ws_config() -> crate::net::WebSocketConfig {
    crate::net::WebSocketConfig::default().read_buffer_size(MARKET_READ_BUFFER)
}

pub fn start(cfg: &ValidConfig) -> Result<EngineHandle, EngineError> {
    start_with(cfg, None, None, record::RecordOptions::default())
}

fn start_with(
    cfg: &ValidConfig,
    handler: Option<HandlerFactory>,
    record_dir: Option<std::path::PathBuf>,
    record_options: record::RecordOptions,
) -> Result<EngineHandle, EngineError> {
    // Discovery names ring itself; the process default is for anything else that asks.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let layout = resolve_layout(cfg, cpus)?;
    let (supervisor, failures) = supervise::Supervisor::new();
    let io_memory = cfg.layout.io_memory_kib << 10;
    uring::probe(io_memory).map_err(EngineError::IoUring)?;
    // One trust for every TLS connection (wss here, https REST through the same options):
    // the webpki roots plus `endpoints.tls_roots_file`.
    let tls = Some(
        tls_config_with_extra_roots(cfg.tls_roots())
            .map_err(|e| EngineError::Tls(e.to_string()))?,
    );
    let c = &cfg.connections;
    let (report_tx, report_rx) = flume::bounded(4096);
    // Stream messages for /ws clients; a full channel costs clients a sequence gap, never the
    // feed (see stream.rs).
    let (stream_tx, stream_rx) = flume::bounded(1 << 16);
    // Stats snapshots every `data::STATS_EVERY`; the API answers from control's copy.
    let (stats_tx, stats_rx) = flume::bounded(64);
    let (publisher, nats_status, nats_tx) = start_publisher(cfg, &layout, &supervisor)?;
    let mut shard_txs = Vec::new();
    let mut executors = Vec::new();
    for (i, &cpu) in layout.data.iter().enumerate() {
        let (tx, rx) = flume::bounded(1024);
        shard_txs.push(tx);
        let shard_cfg = data::DataShardConfig {
            shard: i,
            ws_url: cfg.endpoints.ws_url.clone(),
            connect: ConnectOptions {
                tls: tls.clone(),
                ws_config: Some(market_ws_config()),
                ..ConnectOptions::default()
            },
            tokens_per_conn_target: c.tokens_per_conn_target,
            ids_per_frame_max: c.ids_per_frame_max,
            ping_interval: Duration::from_millis(c.ping_interval_ms),
            pong_timeout: Duration::from_millis(c.pong_timeout_ms),
            data_silence: Duration::from_millis(c.data_silence_ms),
            first_book_timeout: Duration::from_millis(c.first_book_timeout_ms),
            backoff: Backoff { min_ms: c.reconnect_delay_ms_min, max_ms: c.reconnect_delay_ms_max },
            dynamic_subscribe: c.dynamic_subscribe,
            custom_features: c.custom_features,
            handoff_timeout: Duration::from_millis(cfg.lifecycle.handoff_timeout_ms),
            handler: handler.clone(),
            record_dir: record_dir.clone(),
            record_options,
            stale_after: Duration::from_millis(cfg.integrity.stale_after_ms),
            store: store_config(cfg),
            nats: nats_tx
                .clone()
                .map(|tx| (tx, Duration::from_millis(cfg.publish.nats.snapshot_interval_ms))),
        };
        let reports = report_tx.clone();
        let streams = stream_tx.clone();
        let stats_out = stats_tx.clone();
        let name = format!("data-{i}");
        let sup = supervisor.clone();
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&name)
            .io_memory(io_memory)
            .spawn(move || {
                supervise::enter(sup);
                data::run(shard_cfg, rx, reports, streams, stats_out)
            })
            .map_err(|e| EngineError::Executor { name, cpu, reason: e.to_string() })?;
        executors.push(h);
    }
    drop(report_tx);
    drop(stream_tx);
    drop(stats_tx);
    let control_cfg = control::ControlConfig {
        gamma_url: cfg.endpoints.gamma_url.clone(),
        registry: polybook::registry::RegistryConfig {
            shards: layout.data.len(),
            selection: (&cfg.selection).into(),
            listing: polybook::registry::ListingRules {
                absent_runs_max: cfg.discovery.absent_runs_max,
                close_pct_max: cfg.discovery.close_pct_max,
            },
            resolved_grace_ms: cfg.lifecycle.resolved_grace_ms,
            expire_after_end_ms: cfg.lifecycle.expire_after_end_ms,
        },
        tag_ids: cfg.selection.tag_ids.clone(),
        discovery: discovery::DiscoveryLimits {
            page_limit: cfg.discovery.page_limit,
            requests_per_10s_max: cfg.discovery.requests_per_10s_max,
            markets_max: cfg.discovery.markets_max,
            retries_max: 5,
            request_timeout: Duration::from_secs(30),
            tls: discovery::gamma_tls_config(cfg.tls_roots()),
        },
        discovery_interval: Duration::from_millis(cfg.discovery.interval_ms),
        progress_interval: Duration::from_millis(cfg.log.progress_interval_ms),
        recycle: polybook::policy::RecycleLimits {
            pollution_pct: cfg.lifecycle.recycle_pollution_pct,
            age_ms: cfg.lifecycle.recycle_age_ms,
            min_age_ms: cfg.lifecycle.recycle_min_age_ms,
            concurrent_max: cfg.lifecycle.recycle_concurrent_max,
        },
        recycle_check: Duration::from_millis(cfg.lifecycle.recycle_check_ms),
        nats: nats_status,
    };
    let api_cfg = crate::api::ApiConfig {
        listen: cfg.api.listen.clone(),
        ws_limits: stream::ClientLimits {
            buffer: cfg.api.ws_client_buffer_max,
            idle: Duration::from_millis(cfg.api.ws_idle_ms),
            ping: Duration::from_millis(cfg.api.ws_ping_ms),
            ops_per_s: cfg.api.ws_ops_per_s_max,
        },
        requests_per_s_max: cfg.api.requests_per_s_max,
        ready_books_live_pct_min: cfg.api.ready_books_live_pct_min,
        ready_needs_nats: cfg.publish.nats.required_for_ready,
        recycles_max: cfg.lifecycle.recycle_concurrent_max,
        exposure: crate::api::Exposure {
            admin_token: cfg.api.admin_token.clone(),
            allowed_origins: cfg.api.allowed_origins.clone(),
            connections_max: cfg.api.connections_max,
            ws_connections_max: cfg.api.ws_connections_limit(),
        },
    };
    let (stop_tx, stop_rx) = flume::bounded(1);
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let shards = shard_txs.clone();
    let sup = supervisor.clone();
    let h = LocalExecutorBuilder::new(Placement::Fixed(layout.control))
        .name("control")
        .io_memory(io_memory)
        .spawn(move || {
            supervise::enter(sup);
            control::run(
                control_cfg,
                api_cfg,
                shards,
                report_rx,
                stream_rx,
                stats_rx,
                stop_rx,
                bound_tx,
            )
        })
        .map_err(|e| EngineError::Executor {
            name: "control".into(),
            cpu: layout.control,
            reason: e.to_string(),
        })?;
    executors.push(h);
    let api_addr = match bound_rx.recv() {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => {
            for h in executors {
                let _ = h.join();
            }
            return Err(EngineError::Api(e));
        }
        Err(_) => return Err(EngineError::Api("control shard exited before binding".into())),
    };
    tracing::info!(api = %api_addr, data_shards = layout.data.len(), control_cpu = layout.control, "engine started");
    Ok(EngineHandle { api_addr, stop: stop_tx, executors, supervisor, failures, publisher })
}

type PublisherParts = (
    Option<nats::Publisher>,
    Option<std::sync::Arc<nats::NatsStatus>>,
    Option<flume::Sender<nats::PubBatch>>,
);

/// Starts the NATS publisher thread when `[publish.nats] url` is set. It does not wait for
/// the server: an absent server is a state (`/stats`), not a start-up failure.
fn start_publisher(
    cfg: &ValidConfig,
    layout: &Layout,
    sup: &supervise::Supervisor,
) -> Result<PublisherParts, EngineError> {
    let data_shards = layout.data.len();
    let n = &cfg.publish.nats;
    let Some(url) = &n.url else { return Ok((None, None, None)) };
    let auth = match (&n.creds_file, &n.user, &n.token) {
        (Some(f), _, _) => nats::NatsAuth::CredsFile(f.into()),
        (_, Some(u), _) => nats::NatsAuth::UserPassword(
            u.clone(),
            n.password.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default(),
        ),
        (_, _, Some(t)) => nats::NatsAuth::Token(t.expose().to_owned()),
        _ => nats::NatsAuth::None,
    };
    let settings = nats::NatsSettings {
        url: url.clone(),
        prefix: n.subject_prefix.clone(),
        auth,
        cpu: Some(layout.control),
    };
    // One channel for all shards, `channel_capacity` each.
    let (tx, rx) = flume::bounded(n.channel_capacity.saturating_mul(data_shards.max(1)));
    let status = std::sync::Arc::new(nats::NatsStatus::default());
    let p = nats::start(settings, rx, std::sync::Arc::clone(&status), sup.clone())
        .map_err(|e| EngineError::Nats(e.to_string()))?;
    Ok((Some(p), Some(status), Some(tx)))
}
