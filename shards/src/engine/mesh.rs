//! The messages that cross shards. Control sends [`Command`]s to a data shard; data shards
//! send [`Report`]s to control. Both travel on bounded flume channels and the sender waits for
//! room, so nothing is ever dropped; a late message only delays (documented per variant).

use polybook::store::{NewMarketHint, StoreCounters};
use polybook::{ConnId, MarketId, TokenId};

pub use polybook::market::MarketSpec;

/// A reply channel for a query; the answer is sent once.
pub type Reply<T> = flume::Sender<T>;

/// Control → data shard.
#[derive(Debug)]
pub enum Command {
    /// Track these markets and subscribe their tokens. Sent by discovery and admin; if late,
    /// the markets are simply subscribed later.
    Track(Vec<MarketSpec>),
    /// Stop tracking (resolved or closed); unsubscribes. If late, the books stay a while longer.
    Untrack(Vec<MarketId>),
    /// One book as API JSON, or None if this shard does not have the token. Sent by the API;
    /// if late, the HTTP request waits.
    GetBook { token: TokenId, depth: Option<usize>, reply: Reply<Option<String>> },
    /// Counters and states for `/stats` and `/health`. Sent by the API and the progress log.
    Stats { reply: Reply<ShardStats> },
    /// Recycle a connection make-before-break (manual trigger or control's policy). The reply,
    /// if asked for, says whether it started. If late, the connection lives a little longer.
    Recycle { conn: ConnId, reply: Option<Reply<bool>> },
    /// Start (with a snapshot for `client`) or stop streaming tokens to the API's `/ws` hub.
    /// If late, the client's snapshot comes later; updates before it are skipped by seq.
    Stream { client: u64, tokens: Vec<TokenId>, depth: Option<usize>, on: bool },
    /// Close every connection and stop. Sent once at shutdown.
    Shutdown,
}

/// Data shard → control.
#[derive(Debug)]
pub enum Report {
    /// `new_market` events seen on the stream: a hint for discovery to run early. If late,
    /// the next periodic discovery finds the markets anyway.
    NewMarkets { shard: usize, hints: Vec<NewMarketHint> },
    /// A market's `market_resolved` arrived: control marks it resolved and untracks it after
    /// the grace period. If late, the market only stays listed longer.
    Resolved { shard: usize, market: MarketId },
}

/// One connection as `/stats` shows it (the core's view of a slot).
pub use polybook::conn::ConnSnapshot as ConnStats;

/// A data shard's counters, gathered on request.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ShardStats {
    pub shard: usize,
    pub markets: usize,
    pub books: usize,
    pub books_seeding: usize,
    pub books_live: usize,
    pub books_suspect: usize,
    pub books_resyncing: usize,
    pub books_resolved: usize,
    pub books_stale: usize,
    pub connections: Vec<ConnStats>,
    pub reconnects: u64,
    pub connect_failures: u64,
    pub pong_timeouts: u64,
    pub silence_timeouts: u64,
    pub redrives: u64,
    /// Resyncs by cause: failed integrity checks (`resyncs`), socket ended
    /// (`resyncs_connection_lost`), first book late (`redrives`).
    pub resyncs: u64,
    pub resyncs_connection_lost: u64,
    pub resyncs_after_silence: u64,
    /// Time spent Suspect / Resyncing, summed over books (ms).
    pub suspect_ms_total: u64,
    pub resyncing_ms_total: u64,
    pub recycles_started: u64,
    pub recycles_completed: u64,
    pub recycles_failed: u64,
    pub tokens_migrated: u64,
    pub handoff_timeouts: u64,
    pub bytes: u64,
    /// CPU time of the shard's thread (user + system), ms.
    pub cpu_ms: u64,
    /// Tokens streamed to `/ws` clients, and stream messages lost to a full hub channel.
    pub streamed_tokens: usize,
    pub stream_dropped: u64,
    pub stream_gap_snapshots: u64,
    /// The shard's side of `[publish.nats]` (None: off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsShardStats>,
    /// The shard's recording (None: not recording).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingStats>,
    pub apply_ns_p50: u64,
    pub apply_ns_p99: u64,
    pub apply_ns_p999: u64,
    pub apply_ns_max: u64,
    /// The same latencies as Prometheus histogram buckets (not in `/stats`).
    #[serde(skip)]
    pub apply_latency: LatencyBuckets,
    pub store: StoreCounters,
}

/// Upper bounds (ns) of the apply-latency histogram's buckets, `+Inf` implied. Fixed so that
/// every scrape and every shard have the same `le` values (Prometheus sums buckets across
/// series only when their bounds agree): 10 us to 1 s, roughly 1-2.5-5 per decade.
pub const APPLY_LATENCY_BOUNDS_NS: [u64; 15] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
];

/// Apply latencies since start as a Prometheus histogram: `cumulative[i]` counts the values
/// at or below `APPLY_LATENCY_BOUNDS_NS[i]`; `count` is every value (the `+Inf` bucket).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyBuckets {
    pub cumulative: [u64; APPLY_LATENCY_BOUNDS_NS.len()],
    pub count: u64,
    pub sum_ns: u64,
}

/// A data shard's recording (`--record DIR`), from the counters its writer thread shares.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RecordingStats {
    /// Lines handed to the writer thread.
    pub lines_queued: u64,
    /// Lines lost to a full writer queue (the file says `#gap` where they were).
    pub lines_dropped: u64,
    pub lines_written: u64,
    /// Bytes of lines written, before compression.
    pub bytes_in: u64,
    pub files: u64,
    /// The writer hit an error and stopped writing.
    pub failed: bool,
}

/// What a data shard handed the NATS publisher.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct NatsShardStats {
    /// Messages queued for the publisher.
    pub sent: u64,
    /// Messages lost to a full publisher channel (the token's next message is a snapshot).
    pub dropped: u64,
    /// Snapshots rendered for NATS (periodic and repairs; replacements are deltas).
    pub snapshots: u64,
}
