//! The control shard: the market registry (the target state), Gamma discovery on a blocking
//! thread, lifecycle (resolved and closed markets), and the HTTP API. It never touches a book:
//! it sends commands to the data shard that owns each market and reads their reports.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use hashbrown::HashMap;
use polybook::book::TokenMeta;
use polybook::policy::{parse_iso8601_ms, recycle_candidates, ConnView, RecycleLimits};
use polybook::protocol::gamma::GammaMarket;
use polybook::registry::{AbsenceTracker, ListingRules, ListingVerdict};
use polybook::routing::shard_for;
use polybook::{MarketId, TokenId};

use super::discovery::{closed_markets, discover, lookup, DiscoveryLimits};
use super::mesh::{Command, MarketSpec, Report, ShardStats};
use super::stream::{serve_client, ClientRequest, Hub, StreamControl, StreamMsg};
use crate::config::{Secret, Selection};
use crate::net::{
    ws_task, Handler, OriginPolicy, Request, Response, Server, ServerConfig, Shutdown,
    WebSocketConfig, WsTask,
};

/// What the control shard needs to know.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub gamma_url: String,
    pub selection: Selection,
    pub discovery: DiscoveryLimits,
    pub discovery_interval: Duration,
    pub api_listen: String,
    /// How `/ws` clients are bounded (queue, idle, pings, operation rate).
    pub ws_limits: super::stream::ClientLimits,
    /// HTTP requests per second per client address.
    pub requests_per_s_max: u32,
    pub resolved_grace: Duration,
    pub recycle: RecycleLimits,
    pub recycle_check: Duration,
    /// A market this long past its end date (neither resolved nor closed) is expired.
    pub expire_after_end: Duration,
    /// How often a progress line is logged (markets, books live, frames/s); zero: never.
    pub progress_interval: Duration,
    /// Listing sanity: when a market missing from Gamma's listing may be closed.
    pub listing: ListingRules,
    /// `/ready` fails below this share (%) of tracked books live.
    pub ready_books_live_pct_min: u8,
    /// Who may reach the API, and how many at once.
    pub exposure: Exposure,
}

/// The API's exposure: admin authentication, the origins it answers, connection limits.
#[derive(Debug, Clone)]
pub struct Exposure {
    pub admin_token: Option<Secret>,
    /// Besides the listen address, localhost, 127.0.0.1 and [::1] (validated origins).
    pub allowed_origins: Vec<String>,
    pub connections_max: usize,
    /// Upgraded `/ws` streams at once (below `connections_max`).
    pub ws_connections_max: usize,
}

/// A market's lifecycle as the registry sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Listed open by Gamma and subscribed.
    Active,
    /// `market_resolved` arrived; kept visible for the grace period.
    Resolved,
    /// Gamma no longer lists it as open; kept visible for the grace period.
    Closed,
    /// Past its end date by `expire_after_end` without resolving or closing; unsubscribed.
    Expired,
}

struct Entry {
    market: GammaMarket,
    shard: usize,
    state: Lifecycle,
    since: Instant,
}

#[derive(Default, serde::Serialize)]
struct DiscoveryStats {
    runs: u64,
    failures: u64,
    requests: u64,
    retries: u64,
    last_markets: usize,
    last_rejected: usize,
    /// Failed runs since the last good one (0: discovery is healthy).
    consecutive_failures: u64,
    /// The last failure or refusal, kept after recovery (with its age) for operators.
    last_error: Option<String>,
    last_error_ms_ago: Option<u64>,
    #[serde(skip)]
    last_error_at: Option<Instant>,
    /// Listings refused by the sanity rules (they would have closed too much at once).
    refused_runs: u64,
    /// Markets closed after missing from enough complete listings.
    closed: u64,
    /// Markets of refused listings closed because Gamma, asked by id, said so.
    confirmed_closed: u64,
    last_ok_ms_ago: Option<u64>,
    #[serde(skip)]
    last_ok: Option<Instant>,
}

struct Control {
    cfg: ControlConfig,
    registry: HashMap<MarketId, Entry>,
    tokens: HashMap<TokenId, MarketId>,
    shards: Vec<flume::Sender<Command>>,
    discovery: DiscoveryStats,
    absence: AbsenceTracker,
    /// Each data shard's latest stats snapshot and when it arrived.
    shard_stats: Vec<Option<(ShardStats, Instant)>>,
    started: Instant,
    /// Fired to run discovery now (a `new_market` hint); replaced after each run.
    wake_discovery: Shutdown,
}

type ControlRef = Rc<RefCell<Control>>;

/// Runs the control shard until `stop` receives a message. Sends the API's bound address (or
/// the bind error) on `bound` first.
pub async fn run(
    cfg: ControlConfig,
    shards: Vec<flume::Sender<Command>>,
    reports: flume::Receiver<Report>,
    streams: flume::Receiver<StreamMsg>,
    stats_in: flume::Receiver<ShardStats>,
    stop: flume::Receiver<()>,
    bound: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
) {
    let server = match Server::bind(cfg.api_listen.as_str(), api_server_config(&cfg.exposure)) {
        Ok(s) => s,
        Err(e) => {
            let _ = bound.send(Err(format!("cannot listen on {}: {e}", cfg.api_listen)));
            for s in &shards {
                let _ = s.send_async(Command::Shutdown).await;
            }
            return;
        }
    };
    let origins = match OriginPolicy::local(server.local_addr(), &cfg.exposure.allowed_origins) {
        Ok(o) => o,
        Err(e) => {
            let _ = bound.send(Err(format!("api.allowed_origins: {e}")));
            for s in &shards {
                let _ = s.send_async(Command::Shutdown).await;
            }
            return;
        }
    };
    tracing::debug!(origins = %origins.describe(), "api origins");
    let n_shards = shards.len();
    // "Started" means every data shard has answered once: the API never reports a shard down
    // only because its first stats snapshot is still on its way.
    let mut first: Vec<Option<(ShardStats, Instant)>> = vec![None; n_shards];
    let deadline = Instant::now() + Duration::from_secs(5);
    while first.iter().any(Option::is_none) && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = future::or(async { stats_in.recv_async().await.ok() }, async {
            glommio::timer::sleep(left).await;
            None
        })
        .await;
        let Some(st) = got else { break };
        let shard = st.shard;
        if let Some(slot) = first.get_mut(shard) {
            *slot = Some((st, Instant::now()));
        }
    }
    let _ = bound.send(Ok(server.local_addr()));
    let control = Rc::new(RefCell::new(Control {
        cfg,
        registry: HashMap::new(),
        tokens: HashMap::new(),
        shards,
        discovery: DiscoveryStats::default(),
        absence: AbsenceTracker::default(),
        shard_stats: first,
        started: Instant::now(),
        wake_discovery: Shutdown::new(),
    }));
    let api_stop = Shutdown::new();
    let stopping = Shutdown::new();
    let live = Rc::new(Streams {
        control: Rc::clone(&control),
        hub: RefCell::new(Hub::default()),
        stopping: stopping.clone(),
    });
    let hub = glommio::spawn_local(hub_loop(Rc::clone(&live), streams)).detach();
    let api = glommio::spawn_local(server.serve(
        Rc::new(Api {
            limiter: RefCell::new(RateLimiter {
                per_s: control.borrow().cfg.requests_per_s_max,
                windows: HashMap::new(),
                refused: 0,
            }),
            admin_token: control.borrow().cfg.exposure.admin_token.clone(),
            recycles_max: control.borrow().cfg.recycle.concurrent_max,
            recycle_gate: Rc::new(glommio::sync::Semaphore::new(1)),
            origins,
            control: Rc::clone(&control),
            live,
        }),
        api_stop.clone(),
    ))
    .detach();
    let disc = glommio::spawn_local(discovery_loop(Rc::clone(&control), stopping.clone())).detach();
    let rep =
        glommio::spawn_local(report_loop(Rc::clone(&control), reports, stopping.clone())).detach();
    let sts = glommio::spawn_local(stats_in_loop(Rc::clone(&control), stats_in, stopping.clone()))
        .detach();
    let prog = glommio::spawn_local(progress_loop(Rc::clone(&control), stopping.clone())).detach();
    let recy = glommio::spawn_local(recycle_loop(Rc::clone(&control), stopping.clone())).detach();
    let _ = stop.recv_async().await;
    tracing::info!("stopping");
    stopping.trigger();
    api_stop.trigger();
    let shards = control.borrow().shards.clone();
    for s in &shards {
        let _ = s.send_async(Command::Shutdown).await;
    }
    let _ = api.await;
    drop(disc);
    drop(rep);
    drop(sts);
    drop(prog);
    drop(recy);
    drop(hub);
}

/// Live streams: the `/ws` hub and what it needs from control.
struct Streams {
    control: ControlRef,
    hub: RefCell<Hub>,
    stopping: Shutdown,
}

impl StreamControl for Streams {
    fn resolve(&self, req: &ClientRequest) -> (Vec<TokenId>, Vec<String>) {
        let c = self.control.borrow();
        let (mut found, mut unknown) = (Vec::new(), Vec::new());
        for t in &req.tokens {
            match c.tokens.get_key_value(t.as_str()) {
                Some((tok, _)) => found.push(tok.clone()),
                None => unknown.push(t.clone()),
            }
        }
        for m in &req.markets {
            match c.registry.get(m.as_str()) {
                Some(e) => found.extend(e.market.tokens.iter().cloned()),
                None => unknown.push(m.clone()),
            }
        }
        (found, unknown)
    }

    fn stream(&self, client: u64, tokens: Vec<TokenId>, depth: Option<usize>, on: bool) {
        let c = self.control.borrow();
        let n = c.shards.len().max(1);
        let mut per: Vec<Vec<TokenId>> = vec![Vec::new(); n];
        for t in tokens {
            if let Some(e) = c.tokens.get(t.as_str()).and_then(|m| c.registry.get(m.as_str())) {
                per[e.shard].push(t);
            }
        }
        for (shard, tokens) in per.into_iter().enumerate().filter(|(_, v)| !v.is_empty()) {
            if let Some(tx) = c.shards.get(shard).cloned() {
                // Bounded: wait for room on a task rather than block the caller.
                glommio::spawn_local(async move {
                    let _ = tx.send_async(Command::Stream { client, tokens, depth, on }).await;
                })
                .detach();
            }
        }
    }

    fn hub(&self) -> &RefCell<Hub> {
        &self.hub
    }
}

async fn hub_loop(live: Rc<Streams>, streams: flume::Receiver<StreamMsg>) {
    loop {
        let msg = recv_or_stop(&streams, &live.stopping).await;
        let Some(msg) = msg else { return };
        live.hub.borrow_mut().deliver(&msg);
        // Deliver what else is queued without yielding per message.
        while let Ok(more) = streams.try_recv() {
            live.hub.borrow_mut().deliver(&more);
        }
    }
}

/// Control's recycling policy: every `recycle_check`, recycle polluted or old connections
/// (see `policy::recycle_candidates`).
async fn recycle_loop(control: ControlRef, stopping: Shutdown) {
    let (every, limits) = {
        let c = control.borrow();
        (c.cfg.recycle_check, c.cfg.recycle)
    };
    while !stopping.is_triggered() {
        future::or(glommio::timer::sleep(every), stopping.wait()).await;
        if stopping.is_triggered() {
            return;
        }
        let stats = gather_stats(&control).await;
        let views: Vec<ConnView> = stats
            .iter()
            .flatten()
            .flat_map(|s| s.connections.iter())
            .map(|c| ConnView {
                id: c.id,
                age_ms: c.age_ms,
                pollution_pct: c.pollution_pct,
                recycling: c.recycling,
            })
            .collect();
        for conn in recycle_candidates(&views, limits) {
            tracing::info!(conn, "recycling (policy)");
            let tx = control.borrow().shards.get(conn_shard(conn)).cloned();
            if let Some(tx) = tx {
                let _ = tx.send_async(Command::Recycle { conn, reply: None }).await;
            }
        }
    }
}

/// Connection ids carry their shard in the top 8 bits (see `data::run`).
fn conn_shard(conn: u32) -> usize {
    (conn >> 24) as usize
}

async fn progress_loop(control: ControlRef, stopping: Shutdown) {
    let every = control.borrow().cfg.progress_interval;
    if every.is_zero() {
        return;
    }
    let mut last_frames = 0u64;
    let mut last_at = Instant::now();
    while !stopping.is_triggered() {
        future::or(glommio::timer::sleep(every), stopping.wait()).await;
        if stopping.is_triggered() {
            return;
        }
        let stats = gather_stats(&control).await;
        let (mut books, mut live, mut frames, mut conns) = (0usize, 0usize, 0u64, 0usize);
        for s in stats.iter().flatten() {
            books += s.books;
            live += s.books_live;
            frames += s.store.frames;
            conns += s.connections.len();
        }
        let ms = (last_at.elapsed().as_millis() as u64).max(1);
        let rate = frames.saturating_sub(last_frames) * 1000 / ms;
        last_frames = frames;
        last_at = Instant::now();
        let markets = control.borrow().registry.len();
        tracing::info!(
            markets,
            books,
            books_live = live,
            connections = conns,
            frames_per_s = rate,
            "progress"
        );
    }
}

/// Discovery runs forever: each run on a supervised blocking thread; a failed or refused run
/// is retried with backoff (1 s doubling up to the interval) and shown in `/stats`.
async fn discovery_loop(control: ControlRef, stopping: Shutdown) {
    let mut fail_streak: u32 = 0;
    while !stopping.is_triggered() {
        let (url, limits, tags) = {
            let c = control.borrow();
            (c.cfg.gamma_url.clone(), c.cfg.discovery.clone(), c.cfg.selection.tag_ids.clone())
        };
        let result = off_executor("discovery", &stopping, move || discover(&url, &tags, &limits));
        let ok = match result.await {
            Blocking::Stopped => return,
            Blocking::Died => {
                // The supervisor has the panic and fails the process; note it here too.
                note_discovery_failure(&control, "the discovery thread died".into());
                false
            }
            Blocking::Done(Err(e)) => {
                note_discovery_failure(&control, e.to_string());
                false
            }
            Blocking::Done(Ok(run)) => {
                let (cmds, refused) = {
                    let mut c = control.borrow_mut();
                    c.discovery.runs += 1;
                    c.discovery.requests += u64::from(run.requests);
                    c.discovery.retries += u64::from(run.retries);
                    c.discovery.last_markets = run.markets.len();
                    c.discovery.last_rejected = run.rejected;
                    c.discovery.last_ok = Some(Instant::now());
                    c.discovery.consecutive_failures = 0;
                    tracing::info!(markets = run.markets.len(), pages = run.pages, "discovery");
                    apply_discovery(&mut c, run.markets, run.truncated)
                };
                send_commands(&control, cmds).await;
                match refused {
                    Some(candidates) => {
                        confirm_closed(&control, &stopping, candidates).await;
                        false
                    }
                    None => true,
                }
            }
        };
        fail_streak = if ok { 0 } else { fail_streak.saturating_add(1) };
        let expired = sweep_expired(&mut control.borrow_mut());
        send_commands(&control, expired).await;
        let (interval, wake) = {
            let mut c = control.borrow_mut();
            c.wake_discovery = Shutdown::new();
            (c.cfg.discovery_interval, c.wake_discovery.clone())
        };
        if fail_streak > 0 {
            let backoff = Duration::from_secs(1 << (fail_streak - 1).min(10)).min(interval);
            future::or(glommio::timer::sleep(backoff), stopping.wait()).await;
            continue;
        }
        // A `new_market` hint may cut the wait short, but never below a minimum gap: on the
        // venue new markets arrive up to several per second, and Gamma's budget is shared.
        let gap = interval.min(DISCOVERY_GAP_MIN);
        future::or(glommio::timer::sleep(gap), stopping.wait()).await;
        let rest = interval.saturating_sub(gap);
        future::or(future::or(glommio::timer::sleep(rest), wake.wait()), stopping.wait()).await;
    }
}

fn note_discovery_failure(control: &ControlRef, error: String) {
    let mut c = control.borrow_mut();
    c.discovery.runs += 1;
    c.discovery.failures += 1;
    c.discovery.consecutive_failures += 1;
    tracing::warn!(error = %error, "discovery failed; keeping the last registry, retrying");
    c.discovery.last_error = Some(error);
    c.discovery.last_error_at = Some(Instant::now());
}

/// The end of a blocking call run on its own thread.
enum Blocking<T> {
    Done(T),
    /// The thread ended without an answer (it panicked; the supervisor was told).
    Died,
    /// The engine is stopping.
    Stopped,
}

/// Runs `f` (ureq blocks: never on an executor) on a supervised thread and waits for it.
async fn off_executor<T: Send + 'static>(
    name: &'static str,
    stopping: &Shutdown,
    f: impl FnOnce() -> T + Send + 'static,
) -> Blocking<T> {
    let (tx, rx) = flume::bounded(1);
    let spawned = super::supervise::spawn_thread(name, move || {
        let _ = tx.send(f());
    });
    if let Err(e) = spawned {
        tracing::error!(thread = name, error = %e, "cannot start a thread");
        return Blocking::Died;
    }
    let answer = future::or(async { Some(rx.recv_async().await) }, async {
        stopping.wait().await;
        None
    });
    match answer.await {
        None => Blocking::Stopped,
        Some(Ok(v)) => Blocking::Done(v),
        Some(Err(_)) => Blocking::Died,
    }
}

/// Most refused close candidates confirmed with Gamma per run (10 requests).
const CONFIRM_IDS_MAX: usize = 1000;

/// A refused listing's candidates are closed only if Gamma, asked by condition id, says so.
async fn confirm_closed(control: &ControlRef, stopping: &Shutdown, mut ids: Vec<MarketId>) {
    ids.truncate(CONFIRM_IDS_MAX);
    let (url, limits) = {
        let c = control.borrow();
        (c.cfg.gamma_url.clone(), c.cfg.discovery.clone())
    };
    let asked = ids.len();
    let answer =
        off_executor("gamma-confirm", stopping, move || closed_markets(&url, &ids, &limits));
    let closed = match answer.await {
        Blocking::Done(Ok(closed)) => closed,
        Blocking::Done(Err(e)) => {
            tracing::warn!(error = %e, "cannot confirm closed markets; none closed");
            return;
        }
        Blocking::Died | Blocking::Stopped => return,
    };
    tracing::info!(asked, closed = closed.len(), "refused listing: closed what Gamma confirmed");
    let cmds = {
        let mut c = control.borrow_mut();
        c.discovery.confirmed_closed += closed.len() as u64;
        close_markets(&mut c, &closed)
    };
    send_commands(control, cmds).await;
}

/// Commands per shard: markets to track and to untrack.
type ShardCommands = Vec<(usize, Command)>;

/// Marks active markets closed and returns the untracks for their shards.
fn close_markets(c: &mut Control, ids: &[MarketId]) -> ShardCommands {
    let n = c.shards.len().max(1);
    let mut untrack: Vec<Vec<MarketId>> = vec![Vec::new(); n];
    for id in ids {
        c.absence.forget(id.as_str());
        if let Some(e) = c.registry.get_mut(id.as_str()) {
            if e.state == Lifecycle::Active {
                e.state = Lifecycle::Closed;
                e.since = Instant::now();
                untrack[e.shard].push(id.clone());
            }
        }
    }
    untrack
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(i, v)| (i, Command::Untrack(v)))
        .collect()
}

/// Registers new markets and applies the listing-sanity rules to the ones missing. Returns
/// the commands, and the close candidates of a refused listing (to confirm with Gamma).
fn apply_discovery(
    c: &mut Control,
    markets: Vec<GammaMarket>,
    truncated: bool,
) -> (ShardCommands, Option<Vec<MarketId>>) {
    let n = c.shards.len().max(1);
    let mut track: Vec<Vec<MarketSpec>> = vec![Vec::new(); n];
    // Presence counts before selection, so a market added by hand stays while it is open.
    let seen: hashbrown::HashSet<MarketId> =
        markets.iter().map(|m| m.condition_id.clone()).collect();
    let chosen: Vec<GammaMarket> =
        markets.into_iter().filter(|m| selected(&c.cfg.selection, m)).collect();
    for m in chosen {
        if let Some(e) = c.registry.get_mut(m.condition_id.as_str()) {
            if e.state == Lifecycle::Closed {
                // Listed open again (Gamma flapped): subscribe again.
                e.state = Lifecycle::Active;
                e.since = Instant::now();
                track[e.shard].push(spec_of(&e.market));
            }
            continue;
        }
        let shard = shard_for(m.condition_id.as_str(), n);
        track[shard].push(register(c, m, shard));
    }
    let mut out: ShardCommands = Vec::new();
    let mut refused = None;
    // Only a complete listing says anything about the markets it does not name.
    if !truncated {
        let active: Vec<MarketId> = c
            .registry
            .iter()
            .filter(|(_, e)| e.state == Lifecycle::Active)
            .map(|(id, _)| id.clone())
            .collect();
        match c.absence.observe(&active, &seen, c.cfg.listing) {
            ListingVerdict::Close(ids) => {
                c.discovery.closed += ids.len() as u64;
                out.extend(close_markets(c, &ids));
            }
            ListingVerdict::Refused { candidates, active } => {
                c.discovery.refused_runs += 1;
                let why = format!(
                    "listing refused: it would close {} of {active} active markets (more than \
                     discovery.close_pct_max = {} %); confirming with Gamma",
                    candidates.len(),
                    c.cfg.listing.close_pct_max
                );
                tracing::warn!("{why}");
                c.discovery.last_error = Some(why);
                c.discovery.last_error_at = Some(Instant::now());
                refused = Some(candidates);
            }
        }
    }
    out.extend(
        track
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(i, v)| (i, Command::Track(v))),
    );
    (out, refused)
}

/// `[selection]`: explicit lists are united; thresholds apply to every market.
fn selected(sel: &Selection, m: &GammaMarket) -> bool {
    let listed = sel.condition_ids.is_empty() && sel.slugs.is_empty() && sel.token_ids.is_empty()
        || sel.condition_ids.iter().any(|c| c == m.condition_id.as_str())
        || sel.slugs.contains(&m.slug)
        || m.tokens.iter().any(|t| sel.token_ids.iter().any(|x| x == t.as_str()));
    listed
        && m.volume.unwrap_or(0.0) >= sel.volume_min
        && m.liquidity.unwrap_or(0.0) >= sel.liquidity_min
}

/// Adds an active market to the registry and its token index; returns what its shard must
/// track.
fn register(c: &mut Control, m: GammaMarket, shard: usize) -> MarketSpec {
    let spec = spec_of(&m);
    for t in &m.tokens {
        c.tokens.insert(t.clone(), m.condition_id.clone());
    }
    c.registry.insert(
        m.condition_id.clone(),
        Entry { market: m, shard, state: Lifecycle::Active, since: Instant::now() },
    );
    spec
}

fn spec_of(m: &GammaMarket) -> MarketSpec {
    MarketSpec {
        market: m.condition_id.clone(),
        tokens: m.tokens.clone(),
        meta: TokenMeta {
            tick_size: m.tick_size,
            min_order_size: m.min_order_size,
            neg_risk: Some(m.neg_risk),
        },
    }
}

/// Markets long past their end date expire (unsubscribed now); resolved, closed and expired
/// markets leave the registry after the grace period.
fn sweep_expired(c: &mut Control) -> ShardCommands {
    let grace = c.cfg.resolved_grace;
    let n = c.shards.len().max(1);
    let mut untrack: Vec<Vec<MarketId>> = vec![Vec::new(); n];
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let after = c.cfg.expire_after_end.as_millis() as u64;
    for (id, e) in c.registry.iter_mut() {
        let end = e.market.end_date.as_deref().and_then(parse_iso8601_ms);
        if e.state == Lifecycle::Active && end.is_some_and(|end| now_ms > end.saturating_add(after))
        {
            e.state = Lifecycle::Expired;
            e.since = Instant::now();
            untrack[e.shard].push(id.clone());
        }
    }
    let expired: Vec<MarketId> = c
        .registry
        .iter()
        .filter(|(_, e)| e.state != Lifecycle::Active && e.since.elapsed() >= grace)
        .map(|(id, _)| id.clone())
        .collect();
    for id in expired {
        if let Some(e) = c.registry.remove(id.as_str()) {
            for t in &e.market.tokens {
                c.tokens.remove(t.as_str());
            }
            if e.state == Lifecycle::Resolved {
                untrack[e.shard].push(id);
            }
        }
    }
    untrack
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(i, v)| (i, Command::Untrack(v)))
        .collect()
}

async fn send_commands(control: &ControlRef, cmds: ShardCommands) {
    for (shard, cmd) in cmds {
        let tx = control.borrow().shards.get(shard).cloned();
        if let Some(tx) = tx {
            // Bounded: wait for room, never drop a command.
            let _ = tx.send_async(cmd).await;
        }
    }
}

async fn report_loop(control: ControlRef, reports: flume::Receiver<Report>, stopping: Shutdown) {
    loop {
        let r = recv_or_stop(&reports, &stopping).await;
        let Some(r) = r else { return };
        let mut c = control.borrow_mut();
        match r {
            Report::Resolved { market, .. } => {
                if let Some(e) = c.registry.get_mut(market.as_str()) {
                    e.state = Lifecycle::Resolved;
                    e.since = Instant::now();
                }
            }
            Report::NewMarkets { hints, .. } => {
                if hints.iter().any(|h| !c.registry.contains_key(h.market.as_str())) {
                    c.wake_discovery.trigger();
                }
            }
        }
    }
}

/// The next message, or None once `stopping` fires or every sender is gone.
async fn recv_or_stop<T>(rx: &flume::Receiver<T>, stopping: &Shutdown) -> Option<T> {
    future::or(async { rx.recv_async().await.ok() }, async {
        stopping.wait().await;
        None
    })
    .await
}

/// Least time between two discovery runs, whatever wakes it.
const DISCOVERY_GAP_MIN: Duration = Duration::from_secs(2);

const WEB_INDEX: &str = include_str!("web/index.html");
const WEB_JS: &str = include_str!("web/app.js");
const WEB_CSS: &str = include_str!("web/app.css");

/// The HTTP API on the control shard.
struct Api {
    control: ControlRef,
    live: Rc<Streams>,
    limiter: RefCell<RateLimiter>,
    /// The `Host` and `Origin` values the API answers to.
    origins: OriginPolicy,
    admin_token: Option<Secret>,
    /// `lifecycle.recycle_concurrent_max`, which admin recycles obey like the policy's.
    recycles_max: usize,
    /// Admin recycles are decided one at a time: two requests must not both see room below
    /// `recycles_max` and both start.
    recycle_gate: Rc<glommio::sync::Semaphore>,
}

/// Largest `/ws` message (and frame) a client may send; a larger one ends the stream. A
/// subscribe request of about 800 token ids fits; larger sets go in several requests.
pub const WS_MESSAGE_MAX: usize = 64 << 10;

fn api_server_config(e: &Exposure) -> ServerConfig {
    ServerConfig {
        max_connections: e.connections_max,
        max_websockets: Some(e.ws_connections_max),
        ws_config: Some(
            WebSocketConfig::default()
                // Clients send small requests: an idle stream then holds 16 KiB of read
                // buffer, not tungstenite's 128 KiB (thousands of idle streams add up).
                .read_buffer_size(16 << 10)
                .max_message_size(Some(WS_MESSAGE_MAX))
                .max_frame_size(Some(WS_MESSAGE_MAX)),
        ),
        ..ServerConfig::default()
    }
}

/// Fixed one-second windows per client address: simple, and enough to keep one client from
/// monopolising the control shard.
struct RateLimiter {
    per_s: u32,
    windows: HashMap<std::net::IpAddr, (Instant, u32)>,
    refused: u64,
}

impl RateLimiter {
    fn allow(&mut self, ip: Option<std::net::IpAddr>) -> bool {
        let Some(ip) = ip else { return true };
        if self.windows.len() > 10_000 {
            self.windows.retain(|_, (t, _)| t.elapsed() < Duration::from_secs(1));
        }
        let w = self.windows.entry(ip).or_insert((Instant::now(), 0));
        if w.0.elapsed() >= Duration::from_secs(1) {
            *w = (Instant::now(), 0);
        }
        w.1 += 1;
        let ok = w.1 <= self.per_s;
        if !ok {
            self.refused += 1;
        }
        ok
    }
}

const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What a path names. The method is checked against [`Route::allow`] afterwards, so a known
/// path with the wrong method is 405, never 404.
enum Route {
    Page(&'static str, &'static str),
    Health,
    Ready,
    Stats,
    Metrics,
    Markets,
    Market(String),
    Book(String),
    Ws,
    AdminMarkets,
    AdminRecycle(String),
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        Some(match path {
            // The page is embedded in the binary: no separate server, no Node.js at run time.
            "/" | "/index.html" => Route::Page(WEB_INDEX, "text/html; charset=utf-8"),
            "/app.js" => Route::Page(WEB_JS, "text/javascript; charset=utf-8"),
            "/app.css" => Route::Page(WEB_CSS, "text/css; charset=utf-8"),
            "/health" => Route::Health,
            "/ready" => Route::Ready,
            "/stats" => Route::Stats,
            "/metrics" => Route::Metrics,
            "/markets" => Route::Markets,
            "/ws" => Route::Ws,
            "/admin/markets" => Route::AdminMarkets,
            p => {
                if let Some(id) = p.strip_prefix("/markets/") {
                    Route::Market(id.to_owned())
                } else if let Some(token) = p.strip_prefix("/books/") {
                    Route::Book(token.to_owned())
                } else if let Some(conn) = p.strip_prefix("/admin/recycle/") {
                    Route::AdminRecycle(conn.to_owned())
                } else {
                    return None;
                }
            }
        })
    }

    /// The methods the path takes, as the `Allow` header lists them.
    fn allow(&self) -> &'static str {
        match self {
            Route::AdminMarkets | Route::AdminRecycle(_) => "POST",
            _ => "GET, HEAD",
        }
    }

    /// The query parameters the route reads; `None`: any (the page ignores its query, so a
    /// cache-busting `?v=2` stays harmless).
    fn params(&self) -> Option<&'static [&'static str]> {
        match self {
            Route::Page(..) => None,
            Route::Markets => Some(&["status", "shard", "q", "offset", "limit"]),
            Route::Book(_) => Some(&["depth"]),
            _ => Some(&[]),
        }
    }
}

impl Handler for Api {
    fn handle(&self, _req: &Request) -> Response {
        // Unreachable: `handle_async` answers every request.
        Response::not_found()
    }

    fn upgrade(&self, req: &Request) -> Option<WsTask> {
        // Whatever is refused here is answered by `handle_async`, with the reason.
        if req.path != "/ws" || req.method != "GET" || self.refusal(req).is_some() {
            return None;
        }
        if !self.limiter.borrow_mut().allow(req.peer.map(|p| p.ip())) {
            return None;
        }
        let live = Rc::clone(&self.live);
        let buffer = self.control.borrow().cfg.ws_limits;
        let stopping = live.stopping.clone();
        Some(ws_task(move |ws| serve_client(live, ws, buffer, stopping)))
    }

    fn handle_async(
        &self,
        req: &Request,
    ) -> Option<futures_util::future::LocalBoxFuture<'static, Response>> {
        Some(self.answer(req).unwrap_or_else(|resp| Box::pin(future::ready(resp))))
    }
}

type Answer = futures_util::future::LocalBoxFuture<'static, Response>;

impl Api {
    /// Every check a request passes, in the order a hostile client meets them: rate, Host and
    /// Origin (403), admin credentials (401/403), path (404), method (405), content type
    /// (415), query (400). `Err` is the refusal.
    fn answer(&self, req: &Request) -> Result<Answer, Response> {
        if !self.limiter.borrow_mut().allow(req.peer.map(|p| p.ip())) {
            return Err(Response::error(429, "too many requests").with_header("retry-after", "1"));
        }
        if let Some(refused) = self.refusal(req) {
            return Err(refused);
        }
        if req.path == "/admin" || req.path.starts_with("/admin/") {
            self.admin_check(req)?;
        }
        let route = Route::of(&req.path).ok_or_else(Response::not_found)?;
        if !route.allow().split(", ").any(|m| m == req.method) {
            return Err(Response::method_not_allowed(route.allow()));
        }
        if req.method == "POST" && !is_json(req) {
            // A page on another site can POST text/plain or a form without asking first; a
            // JSON POST needs a CORS preflight, which this API never grants.
            return Err(Response::error(415, "POST needs Content-Type: application/json"));
        }
        check_params(req, route.params())?;
        let control = Rc::clone(&self.control);
        let answer: Answer = match route {
            Route::Page(body, kind) => {
                let mut resp = Response::text(200, body);
                resp.content_type = std::borrow::Cow::Borrowed(kind);
                Box::pin(future::ready(resp))
            }
            Route::Health => Box::pin(async move { health(&control).await }),
            Route::Ready => Box::pin(async move { ready(&control).await }),
            Route::Stats => {
                let live = Rc::clone(&self.live);
                Box::pin(async move { stats_response(&control, &live).await })
            }
            Route::Metrics => Box::pin(async move { metrics(&control).await }),
            Route::Markets => {
                let shards = control.borrow().shards.len().max(1);
                let q = MarketQuery::parse(req, shards)?;
                Box::pin(async move { list_markets(&control, &q) })
            }
            Route::Market(id) => Box::pin(async move { get_market(&control, &id).await }),
            Route::Book(token) => {
                let depth = parse_param(req, "depth", "a whole number of levels per side")?;
                Box::pin(async move { get_book(&control, &token, depth).await })
            }
            Route::Ws => {
                return Err(Response::error(426, "/ws takes WebSocket upgrade requests only")
                    .with_header("upgrade", "websocket"))
            }
            Route::AdminMarkets => {
                let body: AdminMarket = req.body_json().map_err(|e| {
                    Response::error(
                        400,
                        &format!("expected {{\"condition_id\"|\"slug\"|\"token_id\": ...}}: {e}"),
                    )
                })?;
                Box::pin(async move { add_market(&control, body).await })
            }
            Route::AdminRecycle(conn) => {
                let conn = conn.parse::<u32>().map_err(|_| {
                    Response::error(400, "connection id must be a number (see /stats)")
                })?;
                let (gate, max) = (Rc::clone(&self.recycle_gate), self.recycles_max);
                Box::pin(async move { admin_recycle(&control, &gate, max, conn).await })
            }
        };
        Ok(answer)
    }

    /// Refuses what a browser sends on another site's behalf: a `Host` that is not the
    /// API's (DNS rebinding: the attacker's name resolving to 127.0.0.1) or an `Origin` that
    /// is not (a form, fetch or WebSocket from another page). Clients that are not browsers
    /// send our `Host` and no `Origin`.
    fn refusal(&self, req: &Request) -> Option<Response> {
        let mut hosts = req.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("host"));
        let (Some((_, host)), None) = (hosts.next(), hosts.next()) else {
            return Some(Response::error(400, "exactly one Host header is required"));
        };
        // Orchestrators probe liveness and readiness by the pod's address (`Host: 10.x.y.z`),
        // which no allow-list can know in advance; both are read-only and reveal nothing a
        // page could abuse, so only their `Origin` is checked.
        let probe = matches!(req.path.as_str(), "/health" | "/ready");
        if !probe && !self.origins.host_allowed(host) {
            tracing::debug!(host = %host, peer = ?req.peer, "refused: Host is not ours");
            return Some(Response::error(
                403,
                "Host is not this API's name; to reach it under another name, add that \
                 origin to api.allowed_origins",
            ));
        }
        let origin = req.header("origin")?;
        if self.origins.origin_allowed(origin) {
            return None;
        }
        tracing::debug!(origin = %origin, peer = ?req.peer, "refused: cross-origin request");
        Some(Response::error(
            403,
            "cross-origin request refused; pages of another origin need it in \
             api.allowed_origins",
        ))
    }

    /// Admin needs the token when one is configured, from any peer: behind a reverse proxy
    /// on the same host every request comes from loopback. Without a token the listener is
    /// loopback only (validated) and so is admin.
    fn admin_check(&self, req: &Request) -> Result<(), Response> {
        match &self.admin_token {
            Some(token) => {
                let given = req.header("authorization").and_then(bearer_token);
                if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.expose().as_bytes()))
                {
                    return Ok(());
                }
                Err(Response::error(401, "admin needs Authorization: Bearer <api.admin_token>")
                    .with_header("www-authenticate", "Bearer realm=\"polybook admin\""))
            }
            None if req.peer.is_some_and(|p| p.ip().is_loopback()) => Ok(()),
            None => Err(Response::error(
                403,
                "admin endpoints are loopback only (set api.admin_token to allow others)",
            )),
        }
    }
}

/// Whether the request says its body is JSON (`application/json`, parameters allowed).
fn is_json(req: &Request) -> bool {
    req.header("content-type").is_some_and(|v| {
        v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    })
}

/// The credentials of `Authorization: Bearer TOKEN` (the scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares without stopping at the first difference, so the time taken does not tell a
/// guesser how much of a token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i).copied().unwrap_or(0), b.get(i).copied().unwrap_or(0));
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// At most 64 characters of a client's value, for an error message.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

fn bad_param(name: &str, value: &str, takes: &str) -> Response {
    Response::error(400, &format!("bad query parameter {name}={:?}: {takes}", clip(value)))
}

/// Unknown and repeated parameters are refused: a typo (`?stauts=closed`) must not quietly
/// return everything.
fn check_params(req: &Request, allowed: Option<&[&str]>) -> Result<(), Response> {
    let Some(allowed) = allowed else { return Ok(()) };
    for (i, (name, _)) in req.query.iter().enumerate() {
        if !allowed.contains(&name.as_str()) {
            let takes = if allowed.is_empty() {
                format!("{} takes no query parameters", req.path)
            } else {
                format!("{} takes {}", req.path, allowed.join(", "))
            };
            return Err(Response::error(
                400,
                &format!("unknown query parameter {:?}: {takes}", clip(name)),
            ));
        }
        if req.query.get(..i).is_some_and(|before| before.iter().any(|(n, _)| n == name)) {
            return Err(Response::error(400, &format!("query parameter {name} given twice")));
        }
    }
    Ok(())
}

/// A query parameter as `T`: `None` when absent, 400 naming it and `takes` when malformed.
fn parse_param<T: std::str::FromStr>(
    req: &Request,
    name: &str,
    takes: &str,
) -> Result<Option<T>, Response> {
    match req.query_param(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| bad_param(name, v, takes)),
    }
}

/// `POST /admin/recycle/{id}`: starts a make-before-break recycle unless
/// `lifecycle.recycle_concurrent_max` recycles (admin's or the policy's) are in flight.
async fn admin_recycle(
    control: &ControlRef,
    gate: &glommio::sync::Semaphore,
    max: usize,
    conn: u32,
) -> Response {
    let tx = control.borrow().shards.get(conn_shard(conn)).cloned();
    let Some(tx) = tx else { return Response::error(404, "no such connection") };
    let Ok(_turn) = gate.acquire_permit(1).await else {
        return Response::error(503, "shutting down");
    };
    match recycles_in_flight(control).await {
        Err(shard) => Response::error(
            503,
            &format!("shard {shard} did not answer: cannot check lifecycle.recycle_concurrent_max"),
        ),
        Ok(n) if n >= max => Response::error(
            429,
            &format!(
                "{n} recycles in flight and lifecycle.recycle_concurrent_max = {max}: retry once \
                 one has finished (connections with \"recycling\": true in /stats)"
            ),
        )
        .with_header("retry-after", "5"),
        Ok(_) => match query(&tx, |reply| Command::Recycle { conn, reply: Some(reply) }).await {
            Some(true) => Response::json(200, &serde_json::json!({"recycling": conn})),
            Some(false) => Response::error(
                409,
                "connection unknown, closing, disconnected or already recycling",
            ),
            None => Response::error(503, "owning shard did not answer"),
        },
    }
}

/// Recycles in flight on every shard, asked now: a cached view could be older than the
/// recycle this very request races with. `Err`: the shard that did not answer.
async fn recycles_in_flight(control: &ControlRef) -> Result<usize, usize> {
    let shards = control.borrow().shards.clone();
    let mut n = 0;
    for (i, tx) in shards.iter().enumerate() {
        let stats = query(tx, |reply| Command::Stats { reply }).await.ok_or(i)?;
        n += stats.connections.iter().filter(|c| c.recycling).count();
    }
    Ok(n)
}

/// `POST /admin/markets` body: one of the three keys.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminMarket {
    condition_id: Option<String>,
    slug: Option<String>,
    token_id: Option<String>,
}

/// Adds a market now, without waiting for discovery: a targeted Gamma lookup, then the same
/// registry entry and `Track` command discovery would make. Selection does not apply.
async fn add_market(control: &ControlRef, a: AdminMarket) -> Response {
    let (key, value) = match (a.condition_id, a.slug, a.token_id) {
        (Some(v), None, None) => ("condition_ids", v),
        (None, Some(v), None) => ("slug", v),
        (None, None, Some(v)) => ("clob_token_ids", v),
        _ => return Response::error(400, "give exactly one of condition_id, slug, token_id"),
    };
    let (url, limits) = {
        let c = control.borrow();
        (c.cfg.gamma_url.clone(), c.cfg.discovery.clone())
    };
    let (tx, rx) = flume::bounded(1);
    let spawned = super::supervise::spawn_thread("gamma-lookup", move || {
        let _ = tx.send(lookup(&url, key, &value, &limits));
    });
    if spawned.is_err() {
        return Response::error(500, "cannot start the lookup thread");
    }
    let found = match rx.recv_async().await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return Response::error(502, &format!("gamma: {e}")),
        Err(_) => return Response::error(500, "lookup thread ended"),
    };
    if found.is_empty() {
        return Response::error(404, "no open market with an order book matches");
    }
    let mut added = Vec::new();
    let cmds = {
        let mut c = control.borrow_mut();
        let n = c.shards.len().max(1);
        let mut track: Vec<Vec<MarketSpec>> = vec![Vec::new(); n];
        for m in found {
            let shard = shard_for(m.condition_id.as_str(), n);
            added.push(serde_json::json!({
                "condition_id": m.condition_id.as_str(),
                "tokens": m.tokens.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                "shard": shard,
            }));
            if c.registry.get(m.condition_id.as_str()).is_some_and(|e| e.state == Lifecycle::Active)
            {
                continue;
            }
            track[shard].push(register(&mut c, m, shard));
        }
        track
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(i, v)| (i, Command::Track(v)))
            .collect()
    };
    send_commands(control, cmds).await;
    Response::json(200, &serde_json::json!({ "added": added }))
}

async fn query<T>(
    tx: &flume::Sender<Command>,
    make: impl FnOnce(flume::Sender<T>) -> Command,
) -> Option<T> {
    let (reply, rx) = flume::bounded(1);
    tx.send_async(make(reply)).await.ok()?;
    future::or(async { rx.recv_async().await.ok() }, async {
        glommio::timer::sleep(QUERY_TIMEOUT).await;
        None
    })
    .await
}

/// A shard whose last snapshot is older than this does not answer (for `/health`, `/ready`).
const STATS_STALE_AFTER: Duration = Duration::from_secs(2);

/// Each data shard's latest stats snapshot (None: none fresh). Costs the data shards nothing:
/// they push snapshots every `data::STATS_EVERY` whatever the request rate.
async fn gather_stats(control: &ControlRef) -> Vec<Option<ShardStats>> {
    let c = control.borrow();
    c.shard_stats
        .iter()
        .map(|s| {
            s.as_ref().filter(|(_, at)| at.elapsed() <= STATS_STALE_AFTER).map(|(st, _)| st.clone())
        })
        .collect()
}

async fn stats_in_loop(
    control: ControlRef,
    stats_in: flume::Receiver<ShardStats>,
    stopping: Shutdown,
) {
    loop {
        let next = recv_or_stop(&stats_in, &stopping).await;
        let Some(st) = next else { return };
        let mut c = control.borrow_mut();
        if let Some(slot) = c.shard_stats.get_mut(st.shard) {
            *slot = Some((st, Instant::now()));
        }
    }
}

async fn health(control: &ControlRef) -> Response {
    let stats = gather_stats(control).await;
    let down: Vec<usize> =
        stats.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i).collect();
    if down.is_empty() {
        Response::json(200, &serde_json::json!({"status": "ok", "shards": stats.len()}))
    } else {
        Response::json(
            503,
            &serde_json::json!({"status": "unavailable", "shards_not_answering": down}),
        )
    }
}

/// Readiness: 200 only when the books can be trusted as a whole. Each failing check is named.
async fn ready(control: &ControlRef) -> Response {
    let stats = gather_stats(control).await;
    let c = control.borrow();
    let mut failing = Vec::new();
    let limit = c.cfg.discovery_interval.saturating_mul(3);
    match c.discovery.last_ok {
        Some(at) if at.elapsed() <= limit => {}
        Some(at) => failing.push(serde_json::json!({
            "check": "discovery",
            "detail": format!(
                "last success {} ms ago (limit {} ms)",
                at.elapsed().as_millis(),
                limit.as_millis()
            ),
            "last_error": c.discovery.last_error,
        })),
        None => failing.push(serde_json::json!({
            "check": "discovery",
            "detail": "no successful discovery run yet",
            "last_error": c.discovery.last_error,
        })),
    }
    let down: Vec<usize> =
        stats.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i).collect();
    if !down.is_empty() {
        failing.push(serde_json::json!({"check": "shards", "shards_not_answering": down}));
    }
    let (mut books, mut live, mut resolved, mut up) = (0usize, 0usize, 0usize, 0usize);
    for s in stats.iter().flatten() {
        books += s.books;
        live += s.books_live;
        resolved += s.books_resolved;
        up += s.connections.iter().filter(|k| k.sockets > 0).count();
    }
    // Resolved books are final and exact: they count as good, not as missing.
    let tracked = books.saturating_sub(resolved);
    if tracked > 0 && up == 0 {
        failing.push(serde_json::json!({"check": "connections", "detail": "no connection is up"}));
    }
    let pct_min = usize::from(c.cfg.ready_books_live_pct_min);
    if tracked > 0 && live * 100 < pct_min * tracked {
        failing.push(serde_json::json!({
            "check": "books_live",
            "detail": format!("{live} of {tracked} tracked books live (minimum {pct_min} %)"),
        }));
    }
    let body = serde_json::json!({
        "ready": failing.is_empty(),
        "failing": failing,
        "books": tracked,
        "books_live": live,
        "connections_up": up,
    });
    Response::json(if failing.is_empty() { 200 } else { 503 }, &body)
}

async fn stats_response(control: &ControlRef, live: &Streams) -> Response {
    let shards = gather_stats(control).await;
    let c = control.borrow();
    let mut by_state: std::collections::BTreeMap<&'static str, usize> = Default::default();
    for e in c.registry.values() {
        let k = match e.state {
            Lifecycle::Active => "active",
            Lifecycle::Resolved => "resolved",
            Lifecycle::Closed => "closed",
            Lifecycle::Expired => "expired",
        };
        *by_state.entry(k).or_default() += 1;
    }
    let mut totals = serde_json::Map::new();
    let mut add = |k: &str, v: u64| {
        let cur = totals.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        totals.insert(k.to_owned(), serde_json::json!(cur + v));
    };
    for s in shards.iter().flatten() {
        add("books", s.books as u64);
        add("books_seeding", s.books_seeding as u64);
        add("books_live", s.books_live as u64);
        add("books_suspect", s.books_suspect as u64);
        add("books_resyncing", s.books_resyncing as u64);
        add("books_resolved", s.books_resolved as u64);
        add("books_stale", s.books_stale as u64);
        add("connections", s.connections.len() as u64);
        add("reconnects", s.reconnects);
        add("frames", s.store.frames);
        add("events_price_change", s.store.events_price_change);
        add("events_book", s.store.events_book);
        add("decode_errors", s.store.errors.total());
        add("hash_checks", s.store.hash_checks);
        add("hash_mismatches", s.store.hash_mismatches);
        for (k, v) in verdict_labels(&s.store.hash) {
            add(&format!("hash_{k}"), v);
        }
        for (k, v) in verdict_labels(&s.store.bbo) {
            add(&format!("bbo_{k}"), v);
        }
        add("untracked", s.store.untracked);
        add("resyncs", s.resyncs);
        add("resyncs_connection_lost", s.resyncs_connection_lost);
        add("resyncs_after_silence", s.resyncs_after_silence);
        add("suspect_ms_total", s.suspect_ms_total);
        add("resyncing_ms_total", s.resyncing_ms_total);
        add("redrives", s.redrives);
        add("recycles_started", s.recycles_started);
        add("recycles_completed", s.recycles_completed);
        add("recycles_failed", s.recycles_failed);
        add("tokens_migrated", s.tokens_migrated);
        add("handoff_timeouts", s.handoff_timeouts);
        add("overlap_frames_ignored", s.store.not_feed);
        add("feed_handoffs", s.store.feed_handoffs);
        add("pong_timeouts", s.pong_timeouts);
        add("silence_timeouts", s.silence_timeouts);
        add("books_marked_suspect", s.store.books_marked_suspect);
        add("books_marked_resyncing", s.store.books_marked_resyncing);
        add("hash_ltp_learned", s.store.hash_ltp_learned);
    }
    let mut disc = serde_json::to_value(&c.discovery).unwrap_or_default();
    if let Some(obj) = disc.as_object_mut() {
        for (key, at) in [
            ("last_ok_ms_ago", c.discovery.last_ok),
            ("last_error_ms_ago", c.discovery.last_error_at),
        ] {
            if let Some(t) = at {
                obj.insert(key.into(), serde_json::json!(t.elapsed().as_millis() as u64));
            }
        }
    }
    Response::json(
        200,
        &serde_json::json!({
            "uptime_ms": c.started.elapsed().as_millis() as u64,
            "markets": by_state,
            "markets_total": c.registry.len(),
            "totals": totals,
            "discovery": disc,
            "streams": {
                "clients": live.hub.borrow().clients(),
                "clients_dropped_slow": live.hub.borrow().clients_dropped_slow,
                "messages_sent": live.hub.borrow().messages_sent,
            },
            "shards": shards,
        }),
    )
}

/// `GET /markets` filters: `status`, `shard`, `q` (text in question or slug, or a condition
/// id), `offset`, `limit` (at most 1000).
struct MarketQuery {
    status: Option<String>,
    shard: Option<usize>,
    q: Option<String>,
    offset: usize,
    limit: usize,
}

impl MarketQuery {
    /// The filters of a `/markets` request; a value out of its domain is 400, never a
    /// silent default.
    fn parse(req: &Request, shards: usize) -> Result<MarketQuery, Response> {
        const STATES: [&str; 4] = ["active", "resolved", "closed", "expired"];
        let status = match req.query_param("status") {
            None => None,
            Some(s) if STATES.contains(&s) => Some(s.to_owned()),
            Some(s) => {
                return Err(bad_param("status", s, "one of active, resolved, closed, expired"))
            }
        };
        let shard_takes = format!("a shard number from 0 to {}", shards - 1);
        let shard = parse_param::<usize>(req, "shard", &shard_takes)?;
        if let Some(s) = shard.filter(|&s| s >= shards) {
            return Err(bad_param("shard", &s.to_string(), &shard_takes));
        }
        let limit_takes = "a whole number from 0 to 1000";
        let limit = parse_param::<usize>(req, "limit", limit_takes)?.unwrap_or(100);
        if limit > 1000 {
            return Err(bad_param("limit", &limit.to_string(), limit_takes));
        }
        Ok(MarketQuery {
            status,
            shard,
            q: req.query_param("q").map(str::to_lowercase).filter(|q| !q.is_empty()),
            offset: parse_param(req, "offset", "a whole number (0 or more)")?.unwrap_or(0),
            limit,
        })
    }
}

fn lifecycle_name(l: Lifecycle) -> &'static str {
    match l {
        Lifecycle::Active => "active",
        Lifecycle::Resolved => "resolved",
        Lifecycle::Closed => "closed",
        Lifecycle::Expired => "expired",
    }
}

fn market_json(e: &Entry) -> serde_json::Value {
    let m = &e.market;
    serde_json::json!({
        "condition_id": m.condition_id.as_str(),
        "id": m.id,
        "question": m.question,
        "slug": m.slug,
        "tokens": m.tokens.iter().map(TokenId::as_str).collect::<Vec<_>>(),
        "outcomes": m.outcomes,
        "state": lifecycle_name(e.state),
        "state_for_ms": e.since.elapsed().as_millis() as u64,
        "shard": e.shard,
        "end_date": m.end_date,
        "tick_size": m.tick_size,
        "min_order_size": m.min_order_size,
        "neg_risk": m.neg_risk,
    })
}

fn list_markets(control: &ControlRef, q: &MarketQuery) -> Response {
    let c = control.borrow();
    let mut hits: Vec<&Entry> = c
        .registry
        .values()
        .filter(|e| q.status.as_deref().is_none_or(|s| s == lifecycle_name(e.state)))
        .filter(|e| q.shard.is_none_or(|s| s == e.shard))
        .filter(|e| {
            q.q.as_deref().is_none_or(|t| {
                e.market.question.to_lowercase().contains(t)
                    || e.market.slug.to_lowercase().contains(t)
                    || e.market.condition_id.as_str() == t
            })
        })
        .collect();
    // A stable order for paging.
    hits.sort_by(|a, b| a.market.condition_id.cmp(&b.market.condition_id));
    let total = hits.len();
    let page: Vec<serde_json::Value> =
        hits.into_iter().skip(q.offset).take(q.limit).map(market_json).collect();
    Response::json(200, &serde_json::json!({ "total": total, "offset": q.offset, "markets": page }))
}

async fn get_market(control: &ControlRef, id: &str) -> Response {
    let (mut body, tokens, tx) = {
        let c = control.borrow();
        let Some(e) = c.registry.get(id) else {
            return Response::error(404, "unknown market");
        };
        (market_json(e), e.market.tokens.clone(), c.shards.get(e.shard).cloned())
    };
    let mut books = Vec::new();
    if let Some(tx) = tx {
        for token in tokens {
            let reply = query(&tx, |reply| Command::GetBook { token, depth: Some(1), reply }).await;
            let book = reply
                .flatten()
                .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
                .unwrap_or(serde_json::Value::Null);
            books.push(book);
        }
    }
    if let Some(obj) = body.as_object_mut() {
        obj.insert("books".into(), serde_json::Value::Array(books));
    }
    Response::json(200, &body)
}

/// A per-shard metric with one more label: name, type, help, label, and its values.
type LabeledMetric = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardStats) -> Vec<(&'static str, u64)>,
);

/// One per-shard metric: name, Prometheus type, help, and how to read it from the stats.
type PerShardMetric = (&'static str, &'static str, &'static str, fn(&ShardStats) -> u64);

/// `GET /metrics`: Prometheus text exposition, gathered from every shard on each scrape
/// (counters live with the shard that owns them; no shared atomics on the hot path).
async fn metrics(control: &ControlRef) -> Response {
    use std::fmt::Write;
    let shards = gather_stats(control).await;
    let mut out = String::with_capacity(16 << 10);
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP polybook_{name} {help}\n# TYPE polybook_{name} {kind}");
    };
    let per_shard: [PerShardMetric; 20] = [
        ("frames_total", "counter", "WebSocket text frames received", |s| s.store.frames),
        ("bytes_total", "counter", "Bytes of text frames received", |s| s.bytes),
        ("frames_pong_total", "counter", "PONG frames received", |s| s.store.frames_pong),
        ("price_change_entries_total", "counter", "price_change entries seen", |s| {
            s.store.price_change_entries
        }),
        ("hash_checks_total", "counter", "Venue book hashes recomputed", |s| s.store.hash_checks),
        ("hash_mismatches_total", "counter", "Recomputed hashes that differed", |s| {
            s.store.hash_mismatches
        }),
        (
            "hash_ltp_learned_total",
            "counter",
            "Mismatches explained by an unannounced trade price",
            |s| s.store.hash_ltp_learned,
        ),
        (
            "bbo_mismatches_total",
            "counter",
            "Entries whose best bid/ask differed from the book",
            |s| s.store.bbo_mismatches,
        ),
        ("untracked_total", "counter", "Events for tokens the shard does not own", |s| {
            s.store.untracked
        }),
        (
            "overlap_frames_ignored_total",
            "counter",
            "Events from a socket that is not the book's feed",
            |s| s.store.not_feed,
        ),
        ("resyncs_total", "counter", "Books resubscribed after repeated failed checks", |s| {
            s.resyncs
        }),
        ("redrives_total", "counter", "Tokens resubscribed after no first book", |s| s.redrives),
        ("reconnects_total", "counter", "Connections reopened after they ended", |s| s.reconnects),
        ("connect_failures_total", "counter", "Failed connection attempts", |s| s.connect_failures),
        ("pong_timeouts_total", "counter", "Connections ended for lack of PONG", |s| {
            s.pong_timeouts
        }),
        ("silence_timeouts_total", "counter", "Connections ended for data silence", |s| {
            s.silence_timeouts
        }),
        ("tokens_migrated_total", "counter", "Books handed to a new socket by recycles", |s| {
            s.tokens_migrated
        }),
        (
            "handoff_timeouts_total",
            "counter",
            "Books not handed over before a recycle gave up",
            |s| s.handoff_timeouts,
        ),
        (
            "shard_cpu_seconds_total",
            "counter",
            "CPU time of the data shard's thread (ms/1000)",
            |s| s.cpu_ms,
        ),
        ("shard_markets", "gauge", "Markets owned by the shard", |s| s.markets as u64),
    ];
    for (name, kind, help, get) in per_shard {
        family(&mut out, name, kind, help);
        for st in shards.iter().flatten() {
            let v = get(st);
            if name == "shard_cpu_seconds_total" {
                let _ = writeln!(
                    out,
                    "polybook_{name}{{shard=\"{}\"}} {}.{:03}",
                    st.shard,
                    v / 1000,
                    v % 1000
                );
            } else {
                let _ = writeln!(out, "polybook_{name}{{shard=\"{}\"}} {v}", st.shard);
            }
        }
    }
    let labeled: [LabeledMetric; 7] = [
        ("hash_verdicts_total", "counter", "Hash claims judged, by verdict", "verdict", |s| {
            verdict_labels(&s.store.hash)
        }),
        (
            "bbo_verdicts_total",
            "counter",
            "Best bid/ask claims judged, by verdict",
            "verdict",
            |s| verdict_labels(&s.store.bbo),
        ),
        ("events_total", "counter", "Events applied or counted, by type", "type", |s| {
            let c = &s.store;
            vec![
                ("book", c.events_book),
                ("price_change", c.events_price_change),
                ("tick_size_change", c.events_tick_size_change),
                ("last_trade_price", c.events_last_trade_price),
                ("best_bid_ask", c.events_best_bid_ask),
                ("new_market", c.events_new_market),
                ("market_resolved", c.events_market_resolved),
                ("unknown", c.events_unknown_type),
            ]
        }),
        (
            "decode_errors_total",
            "counter",
            "Frames or events that did not decode, by kind",
            "kind",
            |s| s.store.errors.by_kind().to_vec(),
        ),
        ("books", "gauge", "Books by status", "status", |s| {
            vec![
                ("seeding", s.books_seeding as u64),
                ("live", s.books_live as u64),
                ("suspect", s.books_suspect as u64),
                ("resyncing", s.books_resyncing as u64),
                ("resolved", s.books_resolved as u64),
                ("stale", s.books_stale as u64),
            ]
        }),
        ("recycles_total", "counter", "Connection recycles by outcome", "outcome", |s| {
            vec![
                ("started", s.recycles_started),
                ("completed", s.recycles_completed),
                ("failed", s.recycles_failed),
            ]
        }),
        (
            "apply_latency_ns",
            "gauge",
            "Frame received to applied, quantiles since start",
            "quantile",
            |s| {
                vec![
                    ("0.5", s.apply_ns_p50),
                    ("0.99", s.apply_ns_p99),
                    ("0.999", s.apply_ns_p999),
                    ("1", s.apply_ns_max),
                ]
            },
        ),
    ];
    for (name, kind, help, label, get) in labeled {
        family(&mut out, name, kind, help);
        for st in shards.iter().flatten() {
            for (k, v) in get(st) {
                let _ =
                    writeln!(out, "polybook_{name}{{shard=\"{}\",{label}=\"{k}\"}} {v}", st.shard);
            }
        }
    }
    family(&mut out, "connections", "gauge", "Connection slots by state");
    for st in shards.iter().flatten() {
        let mut by: std::collections::BTreeMap<&str, usize> = Default::default();
        for c in &st.connections {
            *by.entry(c.state).or_default() += 1;
        }
        for (k, v) in by {
            let _ =
                writeln!(out, "polybook_connections{{shard=\"{}\",state=\"{k}\"}} {v}", st.shard);
        }
    }
    family(&mut out, "shard_up", "gauge", "1 if the shard answered this scrape");
    for (i, st) in shards.iter().enumerate() {
        let _ = writeln!(out, "polybook_shard_up{{shard=\"{i}\"}} {}", u8::from(st.is_some()));
    }
    let c = control.borrow();
    family(&mut out, "markets", "gauge", "Registry markets by lifecycle state");
    let mut by: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in c.registry.values() {
        *by.entry(lifecycle_name(e.state)).or_default() += 1;
    }
    for k in ["active", "resolved", "closed", "expired"] {
        let _ =
            writeln!(out, "polybook_markets{{state=\"{k}\"}} {}", by.get(k).copied().unwrap_or(0));
    }
    let d = &c.discovery;
    for (name, help, v) in [
        ("discovery_runs_total", "Discovery runs", d.runs),
        ("discovery_failures_total", "Discovery runs that failed", d.failures),
        ("discovery_requests_total", "Gamma requests made", d.requests),
        ("discovery_retries_total", "Gamma requests retried after 429/5xx", d.retries),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "polybook_{name} {v}");
    }
    if let Some(rss) = process_rss_bytes() {
        family(&mut out, "process_resident_memory_bytes", "gauge", "Resident set size");
        let _ = writeln!(out, "polybook_process_resident_memory_bytes {rss}");
    }
    let mut resp = Response::text(200, out);
    resp.content_type = std::borrow::Cow::Borrowed("text/plain; version=0.0.4; charset=utf-8");
    resp
}

/// VmRSS from /proc (Linux only, like the engine itself).
fn verdict_labels(c: &polybook::checks::CheckCounts) -> Vec<(&'static str, u64)> {
    vec![
        ("matched_now", c.matched_now),
        ("matched_after_run", c.matched_after_run),
        ("matched_later", c.matched_later),
        ("divergent", c.divergent),
        ("superseded", c.superseded),
        ("unverifiable", c.unverifiable),
    ]
}

fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

async fn get_book(control: &ControlRef, token: &str, depth: Option<usize>) -> Response {
    let target = {
        let c = control.borrow();
        c.tokens
            .get(token)
            .and_then(|m| c.registry.get(m.as_str()))
            .and_then(|e| c.shards.get(e.shard).cloned())
    };
    let Some(tx) = target else {
        return Response::error(404, "unknown token");
    };
    let token = TokenId::new(token);
    match query(&tx, |reply| Command::GetBook { token, depth, reply }).await {
        Some(Some(json)) => Response::json_raw(200, json),
        Some(None) => Response::error(404, "token not tracked on its shard"),
        None => Response::error(503, "owning shard did not answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn market(cid: &str, slug: &str, tokens: [&str; 2], volume: f64) -> GammaMarket {
        GammaMarket {
            id: "1".into(),
            condition_id: MarketId::new(cid),
            question: String::new(),
            slug: slug.into(),
            end_date: None,
            tokens: tokens.iter().map(|t| TokenId::new(t)).collect(),
            outcomes: Vec::new(),
            active: true,
            closed: false,
            archived: false,
            enable_order_book: true,
            accepting_orders: true,
            neg_risk: false,
            tick_size: None,
            min_order_size: None,
            volume: Some(volume),
            liquidity: None,
        }
    }

    #[test]
    fn selection_unites_lists_and_applies_thresholds() {
        let a = market("0xa", "alpha", ["1", "2"], 10.0);
        let b = market("0xb", "beta", ["3", "4"], 1000.0);
        let all = Selection::default();
        assert!(selected(&all, &a) && selected(&all, &b));
        let by_list = Selection {
            condition_ids: vec!["0xa".into()],
            token_ids: vec!["4".into()],
            ..Selection::default()
        };
        assert!(selected(&by_list, &a) && selected(&by_list, &b));
        let by_slug = Selection { slugs: vec!["beta".into()], ..Selection::default() };
        assert!(!selected(&by_slug, &a) && selected(&by_slug, &b));
        let rich = Selection { volume_min: 100.0, ..Selection::default() };
        assert!(!selected(&rich, &a) && selected(&rich, &b));
    }
}
