//! A data shard: one glommio executor running its [`ConnGroup`] — the shard's books and
//! connections as a sans-IO state machine in the core — and the I/O it asks for. This shell
//! turns socket events, commands and the passing time into calls on the group, and the group's
//! [`Action`]s into sockets opened, frames written and sockets closed. Frames are parsed and
//! applied on the task that read them: no internal queue, nothing to drop; backpressure is the
//! TCP socket.
//!
//! Tasks: the command loop, one timer (sleeps until [`ConnGroup::next_wake`]), one stats loop,
//! and per socket a connect-then-read task and a writer. They share the shell through one
//! `Rc<RefCell<_>>`; every borrow is taken and released inside one synchronous step, never
//! across an `.await` (clippy denies it) and never around a call that could re-enter.

mod socket;
mod stats;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::{Latency, Shares, TaskQueueHandle};
use hashbrown::HashMap;
use hdrhistogram::Histogram;
use polybook::conn::{Action, ConnConfig, ConnGroup, Note};
use polybook::policy::Backoff;
use polybook::store::{BookUpdate, UpdateSink};
use polybook::view::{Freshness, ServedBook};
use polybook::{ShardId, SocketId, StoreConfig};

use super::clock::Clock;
use super::mesh::{Command, Report, ShardStats};
use super::record::Recorder;
use super::stream::{StreamMsg, StreamTap};
use crate::net::{ConnectOptions, Message, Shutdown};

pub use stats::STATS_EVERY;

/// How a data shard connects and watches its connections.
#[derive(Clone)]
pub struct DataShardConfig {
    pub shard: usize,
    pub ws_url: String,
    pub connect: ConnectOptions,
    pub tokens_per_conn_target: usize,
    pub ids_per_frame_max: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub data_silence: Duration,
    pub first_book_timeout: Duration,
    pub backoff: Backoff,
    pub dynamic_subscribe: bool,
    pub custom_features: bool,
    /// Longest a recycle waits for the new socket to take every book over.
    pub handoff_timeout: Duration,
    pub store: StoreConfig,
    pub handler: Option<HandlerFactory>,
    /// Record every raw frame and feed decision here (`--record DIR`).
    pub record_dir: Option<std::path::PathBuf>,
    pub record_options: super::record::RecordOptions,
    /// A socket with no data frame for this long marks its Live books Stale.
    pub stale_after: Duration,
    /// `[publish.nats]`: the publisher's channel and the snapshot interval (None: off).
    pub nats: Option<(flume::Sender<crate::engine::nats::PubBatch>, Duration)>,
}

impl DataShardConfig {
    /// The core's view of this configuration.
    pub fn conn_config(&self) -> ConnConfig {
        let ms = |d: Duration| d.as_millis() as u64;
        let mut c = ConnConfig::new(ShardId(self.shard as u16));
        c.tokens_per_conn_target = self.tokens_per_conn_target;
        c.ids_per_frame_max = self.ids_per_frame_max;
        c.ping_interval_ms = ms(self.ping_interval);
        c.pong_timeout_ms = ms(self.pong_timeout);
        c.data_silence_ms = ms(self.data_silence);
        c.first_book_timeout_ms = ms(self.first_book_timeout);
        c.backoff = self.backoff;
        c.dynamic_subscribe = self.dynamic_subscribe;
        c.custom_features = self.custom_features;
        c.handoff_timeout_ms = ms(self.handoff_timeout);
        // The connect itself gives up at its own timeout; this is the backstop.
        c.open_timeout_ms = ms(self.connect.connect_timeout) + ms(self.connect.io_timeout) + 1_000;
        c.stale_after_ms = ms(self.stale_after);
        c
    }
}

impl std::fmt::Debug for dyn BookHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BookHandler")
    }
}

/// `/ws` subscribe snapshots serialised before the shard lets its sockets run again.
const STREAM_SNAPSHOTS_PER_SLICE: usize = 64;

/// A user callback run on the data shard that owns the book, right after each change is
/// applied, with the book itself (no copy, no lock). Keep it short: it runs on the hot path.
pub trait BookHandler {
    fn on_update(&mut self, update: &BookUpdate, book: &polybook::Book);
}

/// Makes one handler per data shard, on that shard's thread (handlers need not be `Send`).
pub type HandlerFactory = std::sync::Arc<dyn Fn(usize) -> Box<dyn BookHandler> + Send + Sync>;

/// Where every change goes after the group applied it: the user's handler and the `/ws` tap.
struct Outputs {
    handler: Option<Box<dyn BookHandler>>,
    tap: StreamTap,
}

impl UpdateSink for Outputs {
    fn on_update(&mut self, update: &BookUpdate, book: &polybook::Book) {
        if let Some(h) = self.handler.as_mut() {
            h.on_update(update, book);
        }
        if self.tap.active() {
            self.tap.on_update(update, book);
        }
    }
}

/// An open socket's handles: its writer's queue and the signal that ends its reader.
struct SocketIo {
    out: flume::Sender<Message>,
    kill: Shutdown,
}

struct Shell {
    /// The recorder's counters (the recorder itself is the group's journal).
    record_counters: Option<std::sync::Arc<super::record::RecordCounters>>,
    shard: usize,
    group: ConnGroup,
    outputs: Outputs,
    sockets: HashMap<SocketId, SocketIo>,
    /// Opens in flight; triggering one abandons it.
    connecting: HashMap<SocketId, Shutdown>,
    ws_url: String,
    connect: ConnectOptions,
    clock: Clock,
    hist: Option<Histogram<u64>>,
    /// Exact sum of the recorded latencies (ns), for the histogram's `_sum`.
    hist_sum_ns: u64,
    reports: flume::Sender<Report>,
    /// Reports waiting for room on the bounded channel (never dropped; retried each tick).
    pending_reports: std::collections::VecDeque<Report>,
    /// Scratch for the group's actions, reused.
    actions: Vec<Action>,
    /// The task queue sockets run in (see [`queues`]).
    feed_queue: Option<TaskQueueHandle>,
    /// Wakes `nats_flush_loop` when a step left NATS messages queued (NATS on only).
    nats_flush: Option<LocalSender<()>>,
}

type ShellRef = Rc<RefCell<Shell>>;

/// Runs a data shard on the current executor until it receives `Command::Shutdown` (or the
/// command channel closes).
pub async fn run(
    cfg: DataShardConfig,
    commands: flume::Receiver<Command>,
    reports: flume::Sender<Report>,
    streams: flume::Sender<StreamMsg>,
    stats_out: flume::Sender<ShardStats>,
) {
    let shard_id = cfg.shard;
    let mut group = ConnGroup::new(cfg.conn_config(), cfg.store.clone());
    let mut record_counters = None;
    if let Some(dir) = cfg.record_dir.as_deref() {
        let settings = polybook::capture::RecordingSettings::of(&cfg.store);
        match Recorder::open(dir, shard_id, &settings, cfg.record_options) {
            Ok(r) => {
                record_counters = Some(std::sync::Arc::clone(&r.counters));
                group.set_journal(Box::new(r));
            }
            Err(e) => {
                tracing::error!(shard = shard_id, error = %e, "cannot record; continuing without")
            }
        }
    }
    let shell = Rc::new(RefCell::new(Shell {
        shard: shard_id,
        group,
        record_counters,
        outputs: Outputs {
            handler: cfg.handler.as_ref().map(|make| make(shard_id)),
            tap: match &cfg.nats {
                Some((tx, every)) => {
                    StreamTap::new(streams).with_nats(tx.clone(), every.as_millis() as u64)
                }
                None => StreamTap::new(streams),
            },
        },
        sockets: HashMap::new(),
        connecting: HashMap::new(),
        ws_url: cfg.ws_url.clone(),
        connect: cfg.connect.clone(),
        clock: Clock::start(),
        // 1 ns .. 60 s at 3 significant digits: valid bounds, so this is always Some.
        hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).ok(),
        hist_sum_ns: 0,
        reports,
        pending_reports: std::collections::VecDeque::new(),
        actions: Vec::new(),
        feed_queue: None,
        nats_flush: None,
    }));
    let (control_q, feed_q) = queues();
    shell.borrow_mut().feed_queue = feed_q;
    let stopping = Shutdown::new();
    spawn_in(control_q, timer_loop(Rc::clone(&shell), stopping.clone()));
    spawn_in(control_q, stats::stats_loop(Rc::clone(&shell), stats_out, stopping.clone()));
    if let Some((_, every)) = &cfg.nats {
        spawn_in(control_q, nats_snapshot_loop(Rc::clone(&shell), *every, stopping.clone()));
        let (tx, rx) = local_channel::new_bounded(1);
        shell.borrow_mut().nats_flush = Some(tx);
        spawn_in(feed_q, nats_flush_loop(Rc::clone(&shell), rx, stopping.clone()));
    }
    let commands_done = Shutdown::new();
    let done = commands_done.clone();
    spawn_in(control_q, {
        let shell = Rc::clone(&shell);
        async move {
            command_loop(&shell, commands).await;
            done.trigger();
        }
    });
    commands_done.wait().await;
    stopping.trigger();
    // The recording ends with the books as they are now: sockets closing below are shutdown,
    // not venue events, and must not mark the replayed books Resyncing.
    step(&shell, |s, _, _, out| s.shutdown(out));
    tracing::info!(shard = shard_id, "data shard stopped");
}

/// Two task queues: one for control's commands, the timer and stats, whose latency matters
/// (the executor preempts the feed for it within a few ms), and one for the sockets. A shard
/// whose sockets keep it at 100 % still answers stats, books and stream subscribes.
fn queues() -> (Option<TaskQueueHandle>, Option<TaskQueueHandle>) {
    let ex = glommio::executor();
    let latency = Latency::Matters(Duration::from_millis(5));
    let control = ex.create_task_queue(Shares::Static(1000), latency, "shard-control");
    let feed = ex.create_task_queue(Shares::Static(1000), Latency::NotImportant, "shard-feed");
    (Some(control), Some(feed))
}

/// Spawns a task into `queue` (the current one if none or if the queue is gone).
fn spawn_in<T: 'static>(
    queue: Option<TaskQueueHandle>,
    f: impl std::future::Future<Output = T> + 'static,
) {
    match queue {
        Some(q) => match glommio::spawn_local_into(f, q) {
            Ok(t) => {
                t.detach();
            }
            Err(e) => tracing::error!(error = %e, "cannot spawn into task queue"),
        },
        None => {
            glommio::spawn_local(f).detach();
        }
    }
}

async fn command_loop(shell: &ShellRef, commands: flume::Receiver<Command>) {
    let shell = Rc::clone(shell);
    while let Ok(cmd) = commands.recv_async().await {
        match cmd {
            Command::Track(specs) => step(&shell, |s, now, _, out| s.track(specs, now, out)),
            Command::Untrack(markets) => {
                let dropped = step(&shell, |s, now, _, out| s.untrack(&markets, now, out));
                let mut sh = shell.borrow_mut();
                for t in &dropped {
                    sh.outputs.tap.untracked(t);
                }
            }
            Command::Recycle { conn, reply } => {
                let started = step(&shell, |s, now, _, out| s.recycle(conn, now, out));
                if let Some(reply) = reply {
                    let _ = reply.send(started);
                }
            }
            Command::GetBook { token, depth, reply } => {
                let json = {
                    let sh = shell.borrow();
                    let now_ms = sh.clock.now_ms();
                    sh.group.store().get(token.as_str()).map(|book| {
                        let fresh = Freshness {
                            now_ms,
                            feed_silent_ms: sh.group.feed_silent_ms(book, now_ms),
                        };
                        ServedBook { book, depth, fresh }.to_json()
                    })
                };
                let _ = reply.send(json);
            }
            Command::Stats { reply } => {
                let _ = reply.send(stats::stats(&shell.borrow()));
            }
            Command::Stream { client, tokens, depth, on } => {
                // Snapshots are serialised a slice at a time so that a client subscribing to
                // thousands of books does not hold the feed up.
                for part in tokens.chunks(STREAM_SNAPSHOTS_PER_SLICE) {
                    {
                        let mut sh = shell.borrow_mut();
                        let Shell { group, outputs, .. } = &mut *sh;
                        for t in part {
                            if !on {
                                outputs.tap.unsubscribe(t.as_str());
                            } else if let Some(book) = group.store().get(t.as_str()) {
                                outputs.tap.subscribe(book, client, depth);
                            }
                        }
                    }
                    glommio::yield_if_needed().await;
                }
            }
            Command::Shutdown => break,
        }
    }
}

/// Runs one synchronous step of the group with the shell's clock and sink, then carries out
/// the actions it asked for. The borrow ends before this returns.
fn step<T>(
    shell: &ShellRef,
    f: impl FnOnce(&mut ConnGroup, u64, &mut Outputs, &mut Vec<Action>) -> T,
) -> T {
    step_ns(shell, |g, now_ns, outputs, out| f(g, now_ns / 1_000_000, outputs, out))
}

/// [`step`] with the time in Unix nanoseconds (a frame's receive stamp).
fn step_ns<T>(
    shell: &ShellRef,
    f: impl FnOnce(&mut ConnGroup, u64, &mut Outputs, &mut Vec<Action>) -> T,
) -> T {
    let mut sh = shell.borrow_mut();
    let now_ns = sh.clock.now_ns();
    let mut actions = std::mem::take(&mut sh.actions);
    let Shell { group, outputs, nats_flush, .. } = &mut *sh;
    let r = f(group, now_ns, outputs, &mut actions);
    match outputs.tap.nats_pending() {
        0 => {}
        n if n >= NATS_BATCH_MAX => outputs.tap.flush_nats(),
        // Full means already woken.
        _ => {
            if let Some(tx) = nats_flush.as_ref() {
                let _ = tx.try_send(());
            }
        }
    }
    carry_out(shell, &mut sh, &mut actions);
    sh.actions = actions;
    r
}

/// Carries out the group's actions: they only queue writes, fire signals and spawn tasks, so
/// nothing here runs another step while the shell is borrowed.
fn carry_out(shell: &ShellRef, sh: &mut Shell, actions: &mut Vec<Action>) {
    for action in actions.drain(..) {
        match action {
            Action::Open { conn, socket } => {
                let cancel = Shutdown::new();
                sh.connecting.insert(socket, cancel.clone());
                let url = sh.ws_url.clone();
                let opts = sh.connect.clone();
                let task = socket::socket_task(Rc::clone(shell), conn, socket, url, opts, cancel);
                spawn_in(sh.feed_queue, task);
            }
            Action::Send { socket, frames } => {
                if let Some(io) = sh.sockets.get(&socket) {
                    for f in frames {
                        let _ = io.out.send(Message::text(f));
                    }
                }
            }
            Action::Close { socket } => {
                if let Some(io) = sh.sockets.remove(&socket) {
                    io.kill.trigger();
                }
                if let Some(cancel) = sh.connecting.remove(&socket) {
                    cancel.trigger();
                }
            }
            Action::NewMarkets(hints) => {
                sh.pending_reports.push_back(Report::NewMarkets { shard: sh.shard, hints })
            }
            Action::Resolved(market) => {
                sh.pending_reports.push_back(Report::Resolved { shard: sh.shard, market })
            }
            Action::Note(note) => log_note(sh.shard, &note),
        }
    }
    flush_reports(sh);
}

fn log_note(shard: usize, note: &Note) {
    match note {
        Note::ConnectFailed { conn, retry_in_ms, .. } => {
            tracing::warn!(shard, conn = %conn, retry_in_ms, "connect failed")
        }
        Note::Reconnecting { conn, socket, retry_in_ms } => {
            tracing::info!(shard, conn = %conn, feed = %socket, retry_in_ms, "socket ended; reconnecting")
        }
        Note::WatchdogEnded { conn, socket, verdict } => {
            tracing::warn!(shard, conn = %conn, feed = %socket, ?verdict, "watchdog ends the connection")
        }
        Note::BooksStale { conn, socket, books } => {
            tracing::warn!(shard, conn = %conn, feed = %socket, books, "no data: books stale")
        }
        Note::StaleBooksResync { conn, socket, books } => {
            tracing::info!(shard, conn = %conn, feed = %socket, books, "data again: resyncing stale books")
        }
        Note::Resync { conn, books, .. } => {
            tracing::warn!(shard, conn = %conn, books, "resyncing books")
        }
        Note::RecycleDone { conn, moved, left } => {
            tracing::info!(shard, conn = %conn, moved, left, "recycle done")
        }
        Note::RecycleFailed { conn, why } => {
            tracing::warn!(shard, conn = %conn, why, "recycle failed")
        }
    }
}

/// Hands queued reports to control while its channel has room; the rest wait for the next try.
fn flush_reports(sh: &mut Shell) {
    while let Some(r) = sh.pending_reports.pop_front() {
        match sh.reports.try_send(r) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(r)) => {
                sh.pending_reports.push_front(r);
                break;
            }
            Err(flume::TrySendError::Disconnected(_)) => {
                sh.pending_reports.clear();
                break;
            }
        }
    }
}

/// NATS snapshots rendered before the feed's queue gets to run.
const NATS_SNAPSHOTS_PER_SLICE: usize = 16;

/// Renders the NATS snapshots of changed books as they fall due. Wakes ~50 times per
/// interval (at least every 5 ms, at most every 250 ms), so each wake renders a small share
/// of the books (they fall due spread over the interval) instead of a burst of a quarter of
/// them that held the feed for milliseconds (measured: engine → NATS → consumer p99 53 ms at
/// 10 k frames/s with 250 ms wakes). Only due tokens are visited (a time-ordered queue).
async fn nats_snapshot_loop(shell: ShellRef, every: Duration, stop: Shutdown) {
    let wake = (every / 50).clamp(Duration::from_millis(5), Duration::from_millis(250));
    while !stop.is_triggered() {
        future::or(glommio::timer::sleep(wake), stop.wait()).await;
        loop {
            let rendered = {
                let mut sh = shell.borrow_mut();
                let now_ms = crate::engine::clock::wall_ms();
                let Shell { group, outputs, .. } = &mut *sh;
                let store = group.store();
                outputs.tap.nats_snapshots(now_ms, NATS_SNAPSHOTS_PER_SLICE, |t| store.get(t))
            };
            if rendered < NATS_SNAPSHOTS_PER_SLICE {
                break;
            }
            // Unconditionally: this queue is latency-sensitive and the feed's is not, so
            // `yield_if_needed` would let a long burst run to its end.
            glommio::executor().yield_task_queue_now().await;
        }
    }
}

/// NATS messages a shard holds before it hands them over whatever else is ready.
const NATS_BATCH_MAX: usize = 256;

/// Hands the NATS messages queued by steps to the publisher once the feed has nothing else
/// ready: this task sits in the feed's queue behind the readers, so frames that arrived
/// together leave as one batch (one hand-over and at most one wake-up of the publisher
/// thread, a syscall on this CPU, per burst instead of per message), and a lone frame's
/// messages leave as soon as it is applied. Measured at 100 k frames/s offered
/// (`polybook-replay-bench --nats spawn`): the shard's extra CPU for NATS went from 10.1 to
/// 7.8 µs/frame and the messages dropped at the shards from 215,756 to 0.
async fn nats_flush_loop(shell: ShellRef, rx: LocalReceiver<()>, stop: Shutdown) {
    let woken = || async { rx.recv().await.is_some() };
    let stopped = || async {
        stop.wait().await;
        false
    };
    while future::or(woken(), stopped()).await {
        shell.borrow_mut().outputs.tap.flush_nats();
    }
    shell.borrow_mut().outputs.tap.flush_nats();
}

/// Sleeps until the group has something due, then lets it act.
async fn timer_loop(shell: ShellRef, stop: Shutdown) {
    while !stop.is_triggered() {
        let wait = {
            let sh = shell.borrow();
            let now = sh.clock.now_ms();
            sh.group.next_wake().saturating_sub(now).max(1)
        };
        future::or(glommio::timer::sleep(Duration::from_millis(wait)), stop.wait()).await;
        if stop.is_triggered() {
            break;
        }
        step(&shell, |g, now, outputs, out| g.tick(now, outputs, out));
    }
}
