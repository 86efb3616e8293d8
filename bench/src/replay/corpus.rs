//! The pre-rendered corpus: the simulator's model (`polybook::sim::model::SimExchange`, the
//! same config as the simulated exchange that serves Gamma, so the same markets, tokens and
//! books) renders every frame before any measurement: each token's opening book from the
//! initial state, then venue events (orders with the real shape's runs, cascades and hashes
//! ahead, trades with their `book`/`last_trade_price`/`best_bid_ask` frames, tick size
//! changes), each already WebSocket-encoded. After chosen numbers of frames the model's
//! `TruthBook`s are kept as the truth of a stream cut there.

use std::collections::HashMap;
use std::time::Instant;

use polybook::sim::model::{SimConfig, SimExchange, SimFrame};
use polybook::sim::rng::Rng;
use polybook::sim::RealShape;

/// The real venue's shape, without stale opening books: a stale snapshot is a genuine
/// divergence that only a REST resync repairs, and the REST books come from the paused
/// simulator, not from this model, so exact equality at the end needs none.
pub(crate) fn real_shape() -> RealShape {
    RealShape { stale_snapshot_permille: 0, ..RealShape::default() }
}

/// One encoded server→client frame of the stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    /// End of the frame in [`Corpus::data`] (it starts where the previous one ends).
    pub(crate) end: usize,
    pub(crate) market: u32,
    /// Some(outcome): only for that token's subscribers.
    pub(crate) token: Option<u8>,
    /// Only for connections with custom features (`best_bid_ask`).
    pub(crate) custom: bool,
    pub(crate) price_change: bool,
}

/// The truth of a stream cut after `frames` frames: every token's BOOK JSON (`view_json`).
pub(crate) struct Checkpoint {
    pub(crate) frames: usize,
    pub(crate) events: u64,
    /// By token index (`market * 2 + outcome`).
    pub(crate) truth: Vec<String>,
    /// Levels per book (both sides) on average, at the cut: what the venue hash renders.
    pub(crate) levels_avg: f64,
}

pub(crate) struct Corpus {
    pub(crate) seed: u64,
    pub(crate) markets: usize,
    pub(crate) start_ms: u64,
    /// By token index (`market * 2 + outcome`).
    pub(crate) tokens: Vec<String>,
    pub(crate) token_index: HashMap<String, u32>,
    /// Each token's opening `book` object (no brackets), from the initial state.
    pub(crate) opening: Vec<String>,
    /// Every frame's WebSocket encoding, back to back.
    pub(crate) data: Vec<u8>,
    pub(crate) frames: Vec<Frame>,
    /// Ascending by `frames`.
    pub(crate) checkpoints: Vec<Checkpoint>,
    pub(crate) events_by_kind: [u64; 3],
    pub(crate) render_secs: f64,
}

impl Corpus {
    /// Frame `i`'s bytes (header and payload).
    pub(crate) fn frame_bytes(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.frames[i - 1].end };
        &self.data[start..self.frames[i].end]
    }

    /// The checkpoint with at least `frames` frames (the last one if none has).
    pub(crate) fn checkpoint(&self, frames: usize) -> &Checkpoint {
        let last = self.checkpoints.len() - 1;
        let i = self.checkpoints.iter().position(|c| c.frames >= frames).unwrap_or(last);
        &self.checkpoints[i]
    }

    pub(crate) fn price_changes(&self, frames: usize) -> usize {
        self.frames[..frames].iter().filter(|f| f.price_change).count()
    }
}

/// The model's config; the simulated exchange gets the same seed, markets, start and shape.
pub(crate) fn sim_config(seed: u64, markets: usize, start_ms: u64) -> SimConfig {
    SimConfig { seed, markets, start_ms, real_shape: real_shape(), ..SimConfig::default() }
}

/// A server→client WebSocket text frame: FIN + text opcode, unmasked, 2/4/10-byte header.
pub(crate) fn push_text_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x81);
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if n <= 0xFFFF {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// One venue event on a uniformly chosen market, in `SimExchange::step`'s mix of orders
/// (~89 %), trades (~10 %) and tick size changes (~1 %, where a market is near an edge) but
/// without its new markets and resolutions: the simulated exchange that serves Gamma is
/// paused, so it would never list a new market, and a resolved market would still be listed
/// active there.
fn event(ex: &mut SimExchange, rng: &mut Rng, markets: usize, out: &mut Vec<SimFrame>) -> usize {
    let idx = rng.below(markets as u64) as u32;
    let roll = rng.below(1000);
    if roll < 96 {
        ex.trade(idx, out);
        1
    } else if roll < 106 && ex.tick_size_change(idx, out) {
        2
    } else {
        ex.order(idx, out);
        0
    }
}

/// Renders the openings, then events until each of `cuts` (frame counts, any order) is
/// reached, keeping the truth at each.
pub(crate) fn render(seed: u64, markets: usize, start_ms: u64, cuts: &[usize]) -> Corpus {
    let t = Instant::now();
    let mut ex = SimExchange::new(sim_config(seed, markets, start_ms));
    let mut tokens = Vec::with_capacity(markets * 2);
    for m in ex.markets() {
        tokens.extend(m.tokens.iter().map(|t| t.as_str().to_owned()));
    }
    let token_index: HashMap<String, u32> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let opening: Vec<String> = tokens
        .iter()
        .map(|t| {
            let dump = ex.opening_dump([t.as_str()]);
            let inner = dump.trim_end().trim_start_matches('[').trim_end_matches(']');
            inner.to_owned()
        })
        .collect();
    let mut cuts: Vec<usize> = cuts.to_vec();
    cuts.sort_unstable();
    cuts.dedup();
    let mut rng = Rng::new(seed ^ 0x7E91_A7E0_0000_0018);
    let mut out: Vec<SimFrame> = Vec::with_capacity(64);
    let (mut data, mut frames) = (Vec::new(), Vec::new());
    let (mut checkpoints, mut events, mut kinds) = (Vec::new(), 0u64, [0u64; 3]);
    for cut in cuts {
        while frames.len() < cut {
            out.clear();
            kinds[event(&mut ex, &mut rng, markets, &mut out)] += 1;
            events += 1;
            for f in out.drain(..) {
                // No broadcasts come out of these events (only new markets are broadcast).
                if f.broadcast {
                    continue;
                }
                push_text_frame(&mut data, f.text.as_bytes());
                let price_change = f.text.contains("\"event_type\":\"price_change\"");
                frames.push(Frame {
                    end: data.len(),
                    market: f.market,
                    token: f.token,
                    custom: f.custom,
                    price_change,
                });
            }
        }
        let truth = (0..markets * 2)
            .map(|i| {
                ex.market(i as u32 / 2).map(|m| m.truth(i % 2).view_json()).unwrap_or_default()
            })
            .collect();
        let levels: usize = ex
            .markets()
            .iter()
            .flat_map(|m| [m.truth(0), m.truth(1)])
            .map(|t| t.bids.len() + t.asks.len())
            .sum();
        let levels_avg = levels as f64 / (2 * markets).max(1) as f64;
        checkpoints.push(Checkpoint { frames: frames.len(), events, truth, levels_avg });
    }
    Corpus {
        seed,
        markets,
        start_ms,
        tokens,
        token_index,
        opening,
        data,
        frames,
        checkpoints,
        events_by_kind: kinds,
        render_secs: t.elapsed().as_secs_f64(),
    }
}
