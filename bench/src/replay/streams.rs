//! One run's streams: the corpus cut at a checkpoint, split by connection (what each one
//! subscribed; custom frames only where custom features are on), each frame numbered in the
//! global order that paces every writer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::corpus::Corpus;
use crate::server::ConnState;

/// One connection's share of a run: its frames back to back and, per frame, where it ends
/// and its place in the global order (the pacing clock: frame `due` leaves at `due / rate`).
pub(crate) struct Stream {
    pub(crate) buf: Vec<u8>,
    pub(crate) ends: Vec<(usize, u64)>,
    pub(crate) start: Instant,
    /// None: flat out.
    pub(crate) rate: Option<f64>,
    /// Some: repeat the stream until this much time has passed (the wire baseline).
    pub(crate) loop_for: Option<Duration>,
    /// Some: the writer notes each batch's last global number and when its `write` began.
    pub(crate) log: Option<SendLog>,
}

/// (last global frame number of a batch, when its `write` began), in write order.
pub(crate) type SendLog = Arc<Mutex<Vec<(u64, Instant)>>>;

/// Per corpus frame: its global number and the first connection (index into `conns`) that
/// carries it; None for a frame no connection gets.
pub(crate) type Routes = Vec<Option<(u64, usize)>>;

/// Which connections get frame `f`: those subscribed to its market (to its token, for a
/// one-token frame), with custom features for a custom frame.
pub(crate) fn build_streams(
    corpus: &Corpus,
    conns: &[Arc<ConnState>],
    frames: usize,
    rate: Option<f64>,
    loop_for: Option<Duration>,
) -> (Vec<(usize, Stream)>, u64, Routes) {
    let mut by_token: Vec<Vec<usize>> = vec![Vec::new(); corpus.markets * 2];
    let mut custom = Vec::with_capacity(conns.len());
    for (k, c) in conns.iter().enumerate() {
        for t in c.tokens.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            by_token[*t as usize].push(k);
        }
        custom.push(c.custom.load(Ordering::Relaxed));
    }
    let start = Instant::now();
    let mut streams: Vec<Stream> = conns
        .iter()
        .map(|_| Stream { buf: Vec::new(), ends: Vec::new(), start, rate, loop_for, log: None })
        .collect();
    let mut due = 0u64;
    let mut routes = Vec::with_capacity(frames);
    let mut to: Vec<usize> = Vec::with_capacity(4);
    for i in 0..frames {
        let f = corpus.frames[i];
        to.clear();
        let m = f.market as usize * 2;
        match f.token {
            Some(o) => to.extend(&by_token[m + usize::from(o)]),
            None => {
                to.extend(&by_token[m]);
                to.extend(&by_token[m + 1]);
                to.sort_unstable();
                to.dedup();
            }
        }
        to.retain(|&k| !f.custom || custom[k]);
        let Some(&first) = to.first() else {
            routes.push(None);
            continue;
        };
        routes.push(Some((due, first)));
        let bytes = corpus.frame_bytes(i);
        for &k in &to {
            let s = &mut streams[k];
            s.buf.extend_from_slice(bytes);
            s.ends.push((s.buf.len(), due));
        }
        due += 1;
    }
    (conns.iter().map(|c| c.id).zip(streams).collect(), due, routes)
}
