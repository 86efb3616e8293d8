//! `[publish.nats]`: every change of every book to NATS, from one std thread named
//! `polybook-nats` that runs async-nats on a tokio current-thread runtime (tokio stays on this
//! thread; the glommio shards never poll a tokio future).
//!
//! Data shards render each message once (the same `Arc<str>` the `/ws` tap sends) and hand it
//! over a bounded flume channel with `try_send`: a full channel drops the message, the shard
//! counts it and marks the token, and the token's next message is a snapshot (see
//! `stream::tap`). This thread keeps the latest snapshot of every token it has seen, so after
//! a reconnect it can republish them all without asking the shards. While disconnected it
//! keeps draining the channel (deltas are counted as dropped, snapshots are kept), so a NATS
//! outage never backs up into a shard.
//!
//! Snapshots go to `{prefix}.snapshot.{token}`, captured by the JetStream stream
//! [`stream_name`] (`max_msgs_per_subject = 1`, memory storage: every snapshot can be rendered
//! again from the engine's books at any time and is republished on every reconnect, so disk
//! writes at snapshot rate would buy nothing; a server restart empties it until the engine
//! republishes). They are core publishes: the stream stores them without a per-message ack
//! round trip, and a lost one is repaired like any other gap.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use hashbrown::HashMap;
use polybook::{MarketId, TokenId};

use super::supervise;

/// One rendered message for the publisher.
#[derive(Debug, Clone)]
pub enum PubMsg {
    /// `{prefix}.delta.{token}`; `snapshot`: the message is a `snapshot` (a book replacement or
    /// a gap repair), so it also goes to `{prefix}.snapshot.{token}` as the token's last value.
    Delta { token: TokenId, text: Arc<str>, snapshot: bool },
    /// A periodic snapshot of a changing book: `{prefix}.snapshot.{token}` only.
    Snapshot { token: TokenId, text: Arc<str> },
    /// `{prefix}.bbo.{token}`: the top of book moved.
    Bbo { token: TokenId, text: Arc<str> },
    /// `{prefix}.trades.{condition_id}`.
    Trade { market: MarketId, text: Arc<str> },
    /// The engine dropped the book: the reset goes to the delta and snapshot subjects and the
    /// kept snapshot is forgotten.
    Gone { token: TokenId, text: Arc<str> },
}

/// What a shard hands over at once: the messages a burst of its steps produced (a frame's
/// changes, their top of book and trades), in order. One hand-over, one wake-up of this
/// thread and one write to the server per burst instead of one per message.
pub type PubBatch = Vec<PubMsg>;

/// How to reach the server.
#[derive(Clone)]
pub struct NatsSettings {
    pub url: String,
    pub prefix: String,
    pub auth: NatsAuth,
    /// The CPU the publisher thread runs on (the control shard's): off the data shards' CPUs,
    /// whose apply latency it otherwise shares (measured: a floating publisher and server
    /// took the data shard's apply p99 at 1 k frames/s from 94 µs to 1.15 ms).
    pub cpu: Option<usize>,
}

#[derive(Clone)]
pub enum NatsAuth {
    None,
    CredsFile(std::path::PathBuf),
    UserPassword(String, String),
    Token(String),
}

/// The publisher's state as `/stats`, `/ready` and `/metrics` show it (written by the
/// publisher thread only, read by control).
#[derive(Debug, Default)]
pub struct NatsStatus {
    pub connected: AtomicBool,
    /// The snapshot stream exists on the server (checked after every connect).
    pub stream_ready: AtomicBool,
    pub published: AtomicU64,
    /// Messages drained while disconnected (snapshots among them are kept and republished).
    pub dropped_disconnected: AtomicU64,
    /// Publishes the client refused or that timed out.
    pub publish_errors: AtomicU64,
    /// Ids that are not a valid subject token (`.`, `*`, `>` or white space): not published.
    pub invalid_subjects: AtomicU64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub republished: AtomicU64,
    pub snapshots_kept: AtomicU64,
    /// Hand-overs (messages or batches) waiting in the shards' channel, sampled every second:
    /// a publisher that keeps up holds it near 0.
    pub backlog: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl NatsStatus {
    fn error(&self, e: impl std::fmt::Display) {
        let text = e.to_string();
        tracing::warn!(error = %text, "nats");
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(text);
        }
    }

    /// Connects after the first: the reconnects.
    pub fn reconnects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed).saturating_sub(1)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// The JetStream stream that keeps the last snapshot per token: the prefix upper-cased with
/// `.` as `_`, then `_SNAPSHOTS` (`polybook` → `POLYBOOK_SNAPSHOTS`).
pub fn stream_name(prefix: &str) -> String {
    let base: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_uppercase() } else { '_' })
        .collect();
    format!("{base}_SNAPSHOTS")
}

/// A running publisher: stop it after the data shards (it drains what they sent).
pub struct Publisher {
    stop: flume::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Publisher {
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Starts the `polybook-nats` thread. It never waits for the server: connecting (and every
/// reconnect, with backoff) happens in the background.
pub fn start(
    settings: NatsSettings,
    rx: flume::Receiver<PubBatch>,
    status: Arc<NatsStatus>,
    sup: supervise::Supervisor,
) -> std::io::Result<Publisher> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (stop, stop_rx) = flume::bounded(1);
    let thread = std::thread::Builder::new().name("polybook-nats".into()).spawn(move || {
        supervise::enter(sup);
        if let Some(cpu) = settings.cpu {
            pin_current(cpu);
        }
        rt.block_on(run(settings, rx, status, stop_rx));
    })?;
    Ok(Publisher { stop, thread })
}

/// Pins this thread to `cpu`; a failure (a CPU outside this process's set) leaves it
/// unpinned and says so.
fn pin_current(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        tracing::warn!(cpu, error = %e, "nats publisher thread not pinned");
    }
}

/// Snapshots republished per turn of the loop, so new messages keep flowing meanwhile.
const REPUBLISH_BATCH: usize = 256;
/// A publish that takes longer than this (the client's queue full while it reconnects) is
/// given up and counted; the shards' channel absorbs the pause.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

enum Conn {
    Up,
    Down,
}

async fn run(
    s: NatsSettings,
    rx: flume::Receiver<PubBatch>,
    status: Arc<NatsStatus>,
    stop: flume::Receiver<()>,
) {
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel::<Conn>();
    let client = loop {
        match connect(&s, ev_tx.clone(), Arc::clone(&status)).await {
            Ok(c) => break Some(c),
            Err(e) => {
                // Options that cannot be built (an unreadable creds file): keep draining and
                // try again, so fixing the file needs no restart.
                status.error(format_args!("cannot connect: {e}"));
                let wait = tokio::time::sleep(Duration::from_secs(5));
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait => break,
                        _ = stop.recv_async() => return,
                        m = rx.recv_async() => match m {
                            Ok(m) => {
                                let n = m.len() as u64;
                                status.dropped_disconnected.fetch_add(n, Ordering::Relaxed);
                                drop(m);
                            }
                            Err(_) => return,
                        },
                    }
                }
            }
        }
    };
    let Some(client) = client else { return };
    let mut p = Pub {
        client: client.clone(),
        js: jetstream::new(client),
        prefix: s.prefix.clone(),
        status,
        kept: HashMap::new(),
        republish: Vec::new(),
        connected: false,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let republishing = p.connected && !p.republish.is_empty();
        tokio::select! {
            biased;
            _ = stop.recv_async() => break,
            Some(ev) = ev_rx.recv() => p.on_conn(ev).await,
            // Before the messages: under a steady stream `rx` is always ready, and a tick
            // after it in this biased order would never run.
            _ = tick.tick() => {
                p.status.backlog.store(rx.len() as u64, Ordering::Relaxed);
                p.on_tick().await;
            }
            m = rx.recv_async() => match m {
                Ok(m) => p.on_batch(m).await,
                Err(_) => break,
            },
            _ = std::future::ready(()), if republishing => p.republish_some().await,
        }
    }
    // What the shards sent before stopping goes out if the server is there.
    while let Ok(m) = rx.try_recv() {
        p.on_batch(m).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), p.client.flush()).await;
}

async fn connect(
    s: &NatsSettings,
    ev: tokio::sync::mpsc::UnboundedSender<Conn>,
    status: Arc<NatsStatus>,
) -> Result<async_nats::Client, String> {
    let opts = match &s.auth {
        NatsAuth::None => async_nats::ConnectOptions::new(),
        NatsAuth::CredsFile(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| format!("creds_file {}: {e}", path.display()))?,
        NatsAuth::UserPassword(u, p) => {
            async_nats::ConnectOptions::with_user_and_password(u.clone(), p.clone())
        }
        NatsAuth::Token(t) => async_nats::ConnectOptions::with_token(t.clone()),
    };
    let st = Arc::clone(&status);
    let opts = opts
        .name("polybook")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        // 50 ms doubling to 5 s, a little jitter-free: one publisher per process.
        .reconnect_delay_callback(|attempts| {
            let shift = attempts.min(7) as u32;
            Duration::from_millis((50u64 << shift).min(5_000))
        })
        .event_callback(move |event| {
            let ev = ev.clone();
            let st = Arc::clone(&st);
            async move {
                match event {
                    async_nats::Event::Connected => {
                        let _ = ev.send(Conn::Up);
                    }
                    async_nats::Event::Disconnected => {
                        let _ = ev.send(Conn::Down);
                    }
                    other => st.error(other),
                }
            }
        });
    opts.connect(s.url.as_str()).await.map_err(|e| e.to_string())
}

struct Pub {
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
    status: Arc<NatsStatus>,
    /// The latest snapshot of every token, republished after each connect.
    kept: HashMap<TokenId, Arc<str>>,
    republish: Vec<TokenId>,
    connected: bool,
}

/// An `Arc<str>` as the payload without copying it.
struct Payload(Arc<str>);
impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Whether `id` can be one token of a subject.
fn subject_token_ok(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic() && !b"*>.".contains(&b))
}

impl Pub {
    async fn on_conn(&mut self, ev: Conn) {
        match ev {
            Conn::Up if self.connected => {}
            Conn::Down if !self.connected => {}
            Conn::Up => {
                self.connected = true;
                self.status.connected.store(true, Ordering::Relaxed);
                let n = self.status.connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(connects = n + 1, "nats connected");
                self.status.stream_ready.store(false, Ordering::Relaxed);
                self.ensure_stream().await;
            }
            Conn::Down => {
                self.connected = false;
                self.status.connected.store(false, Ordering::Relaxed);
                self.status.stream_ready.store(false, Ordering::Relaxed);
                self.status.disconnects.fetch_add(1, Ordering::Relaxed);
                self.republish.clear();
                tracing::warn!("nats disconnected; reconnecting");
            }
        }
    }

    async fn on_tick(&mut self) {
        // The client's own state backs the events up (an event lost would leave us "down").
        let up = self.client.connection_state() == async_nats::connection::State::Connected;
        if up != self.connected {
            self.on_conn(if up { Conn::Up } else { Conn::Down }).await;
        }
        if self.connected && !self.status.stream_ready.load(Ordering::Relaxed) {
            self.ensure_stream().await;
        }
    }

    /// Creates or updates the snapshot stream, then queues every kept snapshot again (the
    /// server may be new, or have lost its memory stream, or missed what was sent while down).
    async fn ensure_stream(&mut self) {
        let cfg = jetstream::stream::Config {
            name: stream_name(&self.prefix),
            subjects: vec![format!("{}.snapshot.>", self.prefix)],
            max_messages_per_subject: 1,
            storage: jetstream::stream::StorageType::Memory,
            discard: jetstream::stream::DiscardPolicy::Old,
            ..Default::default()
        };
        let made =
            tokio::time::timeout(Duration::from_secs(5), self.js.create_or_update_stream(cfg));
        match made.await {
            Ok(Ok(_)) => {
                self.status.stream_ready.store(true, Ordering::Relaxed);
                self.republish = self.kept.keys().cloned().collect();
            }
            Ok(Err(e)) => self.status.error(format_args!("snapshot stream: {e}")),
            Err(_) => self.status.error("snapshot stream: timed out"),
        }
    }

    async fn republish_some(&mut self) {
        let start = self.republish.len().saturating_sub(REPUBLISH_BATCH);
        let batch: Vec<TokenId> = self.republish.drain(start..).collect();
        for token in batch {
            if let Some(text) = self.kept.get(&token).cloned() {
                if self.publish("snapshot", token.as_str(), text).await {
                    self.status.republished.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    async fn on_batch(&mut self, batch: PubBatch) {
        for m in batch {
            self.on_msg(m).await;
        }
    }

    async fn on_msg(&mut self, m: PubMsg) {
        match m {
            PubMsg::Delta { token, text, snapshot } => {
                if snapshot {
                    self.keep(&token, &text);
                    self.publish("snapshot", token.as_str(), Arc::clone(&text)).await;
                }
                self.publish("delta", token.as_str(), text).await;
            }
            PubMsg::Snapshot { token, text } => {
                self.keep(&token, &text);
                self.publish("snapshot", token.as_str(), text).await;
            }
            PubMsg::Bbo { token, text } => {
                self.publish("bbo", token.as_str(), text).await;
            }
            PubMsg::Trade { market, text } => {
                self.publish("trades", market.as_str(), text).await;
            }
            PubMsg::Gone { token, text } => {
                self.kept.remove(&token);
                self.status.snapshots_kept.store(self.kept.len() as u64, Ordering::Relaxed);
                self.publish("snapshot", token.as_str(), Arc::clone(&text)).await;
                self.publish("delta", token.as_str(), text).await;
            }
        }
    }

    fn keep(&mut self, token: &TokenId, text: &Arc<str>) {
        self.kept.insert(token.clone(), Arc::clone(text));
        self.status.snapshots_kept.store(self.kept.len() as u64, Ordering::Relaxed);
    }

    /// Publishes one message if connected; `true` if the client took it.
    async fn publish(&mut self, kind: &str, id: &str, text: Arc<str>) -> bool {
        if !subject_token_ok(id) {
            self.status.invalid_subjects.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if !self.connected {
            self.status.dropped_disconnected.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let subject = format!("{}.{kind}.{id}", self.prefix);
        let payload = Bytes::from_owner(Payload(text));
        match tokio::time::timeout(PUBLISH_TIMEOUT, self.client.publish(subject, payload)).await {
            Ok(Ok(())) => {
                self.status.published.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(Err(e)) => {
                self.status.publish_errors.fetch_add(1, Ordering::Relaxed);
                self.status.error(format_args!("publish: {e}"));
                false
            }
            Err(_) => {
                self.status.publish_errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_name_and_subject_tokens() {
        assert_eq!(stream_name("polybook"), "POLYBOOK_SNAPSHOTS");
        assert_eq!(stream_name("eu.books"), "EU_BOOKS_SNAPSHOTS");
        assert!(subject_token_ok("0xabc") && subject_token_ok("1234"));
        for bad in ["", "a.b", "a*", ">", "a b"] {
            assert!(!subject_token_ok(bad), "{bad}");
        }
    }
}
