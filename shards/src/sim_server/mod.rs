//! The simulated Polymarket exchange's servers: Gamma, CLOB REST, the market-channel
//! WebSocket and `/sim/` truth and control endpoints, all on one port of one glommio executor.
//! It is the test bed, the demo backend and the load generator, so it behaves like the venue
//! (protocol doc §1–§4, §8): opening dumps, whole frames per market, the ~500-token limit,
//! idle closes without a close frame, 1013 for slow consumers, and injectable faults.
//!
//! The market model is [`polybook::sim::SimExchange`]; this module adds the network, the event
//! clock and the fan-out. One executor owns everything (`Rc<RefCell<_>>`); to scale out, run
//! several servers with different seeds, or shard markets across executors the way the engine
//! does (each executor its own `State` and listener).
//!
//! Endpoints:
//! - `GET /markets/keyset?closed&limit&after_cursor`, `GET /markets?closed&limit&offset`
//! - `GET /book?token_id=`, `POST /books` with `[{"token_id":".."}]`
//! - WebSocket `/ws/market`
//! - `GET /sim/book/{token}` (BOOK JSON of the independent truth, `sim::truth`), `GET /sim/markets`, `GET /sim/status`
//!   (counters, including the last `User-Agent` per endpoint kind),
//!   `POST /sim/pause`, `POST /sim/resume`, `POST /sim/step?n=N[&now_ms=T]`,
//!   `POST /sim/fault` with `{"kind","conn","duration_ms","count"}`,
//!   `POST /sim/tick_size_change?market=CONDITION_ID` (a tick change now, where the model allows)
//!
//! With [`SimServerConfig::tls`] the same port serves https and wss instead (a self-signed
//! certificate for `localhost`: clients must trust [`TlsIdentity::cert_pem`]).
//!
//! ```no_run
//! use polybook_shards::sim_server::{spawn_sim_server, SimServerConfig};
//! let sim = spawn_sim_server(SimServerConfig { markets: 50, rate: 500.0, ..Default::default() })?;
//! println!("gamma at {}, market channel at {}", sim.http_url(), sim.ws_url());
//! sim.stop()?;
//! # Ok::<(), polybook_shards::sim_server::SimServerError>(())
//! ```

mod driver;
mod fault;
pub mod replay_venue;
mod routes;
mod state;
mod ws;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use glommio::{LocalExecutorBuilder, Placement};
use polybook::sim::{RealShape, SimConfig, SimExchange};

pub use crate::net::TlsIdentity;
use crate::net::{NetError, Server, ServerConfig, Shutdown};
pub use fault::{FaultKind, FaultRequest, RandomFaults, FAULT_DURATION_MS_DEFAULT};
pub use routes::{NO_ORDERBOOK, STEP_N_MAX};
use state::State;
pub use state::{AgentSeen, CloseCounts, EventCounts, FaultCounts, SimCounters, UserAgents};
pub use ws::SLOW_CONSUMER_REASON;

/// How the simulated exchange runs.
#[derive(Debug, Clone)]
pub struct SimServerConfig {
    /// Address to bind; `127.0.0.1:0` picks a free port (read it back from the handle).
    pub listen: String,
    pub seed: u64,
    /// Markets at start (two tokens each); more are listed as the model runs.
    pub markets: usize,
    /// Events generated per second; 0 generates nothing until `/sim/step`.
    pub rate: f64,
    /// Tokens per connection that get books and updates (the venue's ~500); more are accepted
    /// silently and get nothing.
    pub tokens_per_conn_max: usize,
    /// A connection with no client traffic at all for this long is dropped without a close
    /// frame (the venue: ~125 s).
    pub idle_close_ms: u64,
    /// Frames queued for one connection beyond which it is closed with 1013.
    pub queue_frames_max: usize,
    pub random_faults: Option<RandomFaults>,
    /// Start paused: nothing is generated until `/sim/resume` (or `/sim/step`).
    pub start_paused: bool,
    /// Venue clock at start (unix ms); None: the wall clock. Fix it (and pass `now_ms` to
    /// `/sim/step`) for byte-identical runs.
    pub start_ms: Option<u64>,
    /// HTTP/WebSocket server limits.
    pub server: ServerConfig,
    /// CPU to pin [`spawn_sim_server`]'s executor to; None: unbound.
    pub cpu: Option<usize>,
    /// Serve https and wss with this certificate (e.g. [`TlsIdentity::self_signed_localhost`]);
    /// None: plain http and ws.
    pub tls: Option<TlsIdentity>,
    /// The real venue's traffic quirks (same-timestamp runs, hashes ahead, stale snapshots,
    /// ...); [`RealShape::off`] for plain traffic.
    pub real_shape: RealShape,
}

impl Default for SimServerConfig {
    fn default() -> Self {
        SimServerConfig {
            listen: "127.0.0.1:0".to_owned(),
            seed: 1,
            markets: 100,
            rate: 100.0,
            tokens_per_conn_max: 500,
            idle_close_ms: 125_000,
            queue_frames_max: 50_000,
            random_faults: None,
            start_paused: false,
            start_ms: None,
            server: ServerConfig::default(),
            cpu: None,
            tls: None,
            real_shape: RealShape::default(),
        }
    }
}

/// Most markets a simulated exchange may start with.
pub const MARKETS_MAX: usize = 2_000_000;

/// Why the simulated exchange could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SimServerError {
    #[error("invalid sim server config: {0}")]
    Config(String),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: String, source: NetError },
    #[error("sim server executor: {0}")]
    Executor(String),
}

/// A bound exchange, ready to [`SimServer::run`]. Bind on the executor that will run it.
pub struct SimServer {
    server: Server,
    state: Rc<RefCell<State>>,
    cfg: SimServerConfig,
}

impl SimServer {
    /// Validates the config, builds the market model and binds the listener.
    pub fn bind(cfg: SimServerConfig) -> Result<SimServer, SimServerError> {
        validate(&cfg)?;
        let mut server_cfg = cfg.server.clone();
        if let Some(id) = &cfg.tls {
            let tls = id.server_config().map_err(|e| SimServerError::Config(e.to_string()))?;
            server_cfg.tls = Some(tls);
        }
        let server = Server::bind(cfg.listen.as_str(), server_cfg)
            .map_err(|source| SimServerError::Bind { addr: cfg.listen.clone(), source })?;
        let ex = SimExchange::new(SimConfig {
            seed: cfg.seed,
            markets: cfg.markets,
            start_ms: cfg.start_ms.unwrap_or_else(wall_ms),
            real_shape: cfg.real_shape,
            ..SimConfig::default()
        });
        let limits = state::Limits {
            tokens_per_conn_max: cfg.tokens_per_conn_max,
            queue_frames_max: cfg.queue_frames_max,
        };
        let state = State::new(ex, limits, cfg.start_paused, cfg.rate);
        Ok(SimServer { server, state: Rc::new(RefCell::new(state)), cfg })
    }

    /// The bound address, with the real port when bound to port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown` fires; returns once every connection has ended.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), SimServerError> {
        let SimServer { server, state, cfg } = self;
        tracing::info!(
            addr = %server.local_addr(),
            seed = cfg.seed,
            markets = cfg.markets,
            rate = cfg.rate,
            tls = cfg.tls.is_some(),
            "sim server listening"
        );
        let generator = glommio::spawn_local(driver::generate(
            Rc::clone(&state),
            driver::rate_milli(cfg.rate),
            shutdown.clone(),
        ));
        let faults = cfg.random_faults.as_ref().map(|rf| {
            let plan = fault::FaultPlan::new(rf);
            glommio::spawn_local(driver::random_faults(Rc::clone(&state), plan, shutdown.clone()))
        });
        let routes = routes::Routes {
            state,
            idle: Duration::from_millis(cfg.idle_close_ms),
            shutdown: shutdown.clone(),
        };
        server.serve(Rc::new(routes), shutdown).await;
        generator.await;
        if let Some(f) = faults {
            f.await;
        }
        Ok(())
    }
}

/// Binds, reports the bound address through `on_bound` (before any client can need it), and
/// serves on the current executor until `shutdown` fires.
pub async fn serve(
    cfg: SimServerConfig,
    shutdown: Shutdown,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), SimServerError> {
    let server = SimServer::bind(cfg)?;
    on_bound(server.local_addr());
    server.run(shutdown).await
}

/// A simulated exchange on its own thread and executor. Dropping the handle stops it too.
pub struct SimServerHandle {
    addr: SocketAddr,
    /// The certificate's PEM when serving TLS.
    cert_pem: Option<String>,
    stop: Option<flume::Sender<()>>,
    join: Option<glommio::ExecutorJoinHandle<Result<(), SimServerError>>>,
}

impl SimServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr` (Gamma, CLOB REST and `/sim/` share it), or with TLS
    /// `https://localhost:PORT`: the name the certificate is for.
    pub fn http_url(&self) -> String {
        match self.cert_pem {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }

    /// `ws://addr/ws/market`, or with TLS `wss://localhost:PORT/ws/market`.
    pub fn ws_url(&self) -> String {
        match self.cert_pem {
            Some(_) => format!("wss://localhost:{}/ws/market", self.addr.port()),
            None => format!("ws://{}/ws/market", self.addr),
        }
    }

    /// The certificate clients must trust, as PEM; None without TLS.
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) -> Result<(), SimServerError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), SimServerError> {
        // Dropping the sender wakes the stop task as surely as a message would.
        self.stop.take();
        match self.join.take() {
            Some(join) => join.join().map_err(|e| SimServerError::Executor(e.to_string()))?,
            None => Ok(()),
        }
    }
}

impl Drop for SimServerHandle {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "sim server stopped with an error");
        }
    }
}

impl std::fmt::Debug for SimServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimServerHandle").field("addr", &self.addr).finish()
    }
}

/// Starts the exchange on a new thread with its own executor and returns once it listens.
pub fn spawn_sim_server(cfg: SimServerConfig) -> Result<SimServerHandle, SimServerError> {
    validate(&cfg)?;
    let cert_pem = cfg.tls.as_ref().map(TlsIdentity::cert_pem);
    let (addr_tx, addr_rx) = flume::bounded::<Result<SocketAddr, SimServerError>>(1);
    let (stop_tx, stop_rx) = flume::bounded::<()>(1);
    let placement = cfg.cpu.map_or(Placement::Unbound, Placement::Fixed);
    // Sockets do not use io memory; the default 10 MiB fails to register under a small
    // memlock limit (stack notes).
    let builder = LocalExecutorBuilder::new(placement).name("sim-server").io_memory(128 << 10);
    let join = builder
        .spawn(move || async move {
            let server = match SimServer::bind(cfg) {
                Ok(s) => s,
                Err(e) => {
                    let _ = addr_tx.send(Err(e));
                    return Ok(());
                }
            };
            let _ = addr_tx.send(Ok(server.local_addr()));
            let shutdown = Shutdown::new();
            let trigger = shutdown.clone();
            glommio::spawn_local(async move {
                // A message or a dropped handle: either way, stop.
                let _ = stop_rx.recv_async().await;
                trigger.trigger();
            })
            .detach();
            server.run(shutdown).await
        })
        .map_err(|e| SimServerError::Executor(e.to_string()))?;
    let bound = addr_rx.recv().map_err(|_| SimServerError::Executor("did not start".into()));
    let mut handle = SimServerHandle {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        cert_pem,
        stop: Some(stop_tx),
        join: Some(join),
    };
    match bound.and_then(|r| r) {
        Ok(addr) => {
            handle.addr = addr;
            Ok(handle)
        }
        Err(e) => {
            let _ = handle.shutdown();
            Err(e)
        }
    }
}

fn validate(cfg: &SimServerConfig) -> Result<(), SimServerError> {
    let bad = |m: &str| Err(SimServerError::Config(m.to_owned()));
    if !(cfg.rate.is_finite() && cfg.rate >= 0.0) {
        return bad("rate must be a finite number >= 0");
    }
    if cfg.markets > MARKETS_MAX {
        return bad("markets is above MARKETS_MAX");
    }
    if cfg.tokens_per_conn_max == 0 || cfg.queue_frames_max == 0 || cfg.idle_close_ms == 0 {
        return bad("tokens_per_conn_max, queue_frames_max and idle_close_ms must be > 0");
    }
    if let Some(rf) = &cfg.random_faults {
        if !(rf.per_minute.is_finite() && rf.per_minute > 0.0) {
            return bad("random_faults.per_minute must be a finite number > 0");
        }
    }
    Ok(())
}

/// Wall-clock unix milliseconds (the venue's timestamps).
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
