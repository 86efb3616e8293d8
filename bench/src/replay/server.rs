//! The generator's own market-channel WebSocket server: std threads and std::net on
//! 127.0.0.1, all pinned to the generator's CPU. Per connection a reader (tungstenite after
//! its `accept` handshake: subscriptions and `PING`) and a writer that owns every byte sent:
//! opening books on subscribe, `PONG`, and streams of pre-encoded frames written with big
//! `write_all` calls, paced to a rate or flat out. Frames are never split between writes,
//! so a `PONG` always lands between two whole frames.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use tungstenite::Message;

use crate::corpus::{push_text_frame, Corpus};
use crate::pin_current;
pub(crate) use crate::streams::{build_streams, Stream};

/// Most bytes per `write_all`.
pub(crate) const CHUNK: usize = 256 << 10;

/// A paced writer sleeps at least this long when nothing is due, so that at high rates
/// frames leave in small batches instead of one syscall each.
const PACE_QUANTUM: Duration = Duration::from_micros(200);

/// What one connection subscribed and what was sent on it.
#[derive(Default)]
pub(crate) struct ConnState {
    pub(crate) id: usize,
    /// Token indexes (`market * 2 + outcome`), in subscription order.
    pub(crate) tokens: Mutex<Vec<u32>>,
    pub(crate) custom: AtomicBool,
    pub(crate) dumps_sent: AtomicU64,
    pub(crate) pings: AtomicU64,
    pub(crate) stream_frames: AtomicU64,
    pub(crate) closed: AtomicBool,
    /// When its last stream was written out.
    pub(crate) finished: Mutex<Option<Instant>>,
}

enum ToWriter {
    Subscribe { tokens: Vec<u32>, custom: Option<bool>, dump: bool },
    Unsubscribe(Vec<u32>),
    Ping,
    Stream(Stream),
    Stop,
}

struct Conn {
    state: Arc<ConnState>,
    tx: Sender<ToWriter>,
    threads: Vec<JoinHandle<()>>,
}

pub(crate) struct Server {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Conn>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    pub(crate) fn start(corpus: Arc<Corpus>, cpu: Option<usize>) -> Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the replay server")?;
        let addr = listener.local_addr()?;
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, s2) = (Arc::clone(&conns), Arc::clone(&stop));
        let accept = std::thread::Builder::new().name("replay-accept".into()).spawn(move || {
            if let Some(cpu) = cpu {
                pin_current(cpu);
            }
            for stream in listener.incoming() {
                if s2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let mut conns = c2.lock().unwrap_or_else(|e| e.into_inner());
                let id = conns.len();
                if let Ok(conn) = open_conn(id, stream, &corpus, cpu) {
                    conns.push(conn);
                }
            }
        })?;
        Ok(Server { addr, conns, stop, accept: Some(accept) })
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/ws/market", self.addr)
    }

    /// The connections still open.
    pub(crate) fn conns(&self) -> Vec<Arc<ConnState>> {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns
            .iter()
            .filter(|c| !c.state.closed.load(Ordering::Relaxed))
            .map(|c| Arc::clone(&c.state))
            .collect()
    }

    /// Hands each connection (by id) its stream; their clock starts now. Returns the start.
    pub(crate) fn stream(&self, streams: Vec<(usize, Stream)>) -> Instant {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let start = Instant::now();
        for (id, mut s) in streams {
            s.start = start;
            if let Some(c) = conns.get(id) {
                *c.state.finished.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let _ = c.tx.send(ToWriter::Stream(s));
            }
        }
        start
    }

    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for c in &conns {
            let _ = c.tx.send(ToWriter::Stop);
        }
        for c in conns {
            for t in c.threads {
                let _ = t.join();
            }
        }
    }
}

fn open_conn(
    id: usize,
    stream: TcpStream,
    corpus: &Arc<Corpus>,
    cpu: Option<usize>,
) -> Result<Conn> {
    stream.set_nodelay(true)?;
    let ws = tungstenite::accept(stream).map_err(|e| anyhow::anyhow!("handshake: {e}"))?;
    let out = ws.get_ref().try_clone()?;
    let state = Arc::new(ConnState { id, ..ConnState::default() });
    let (tx, rx) = channel();
    let (s1, tx1, corpus1) = (Arc::clone(&state), tx.clone(), Arc::clone(corpus));
    let reader = std::thread::Builder::new().name(format!("replay-r{id}")).spawn(move || {
        if let Some(cpu) = cpu {
            pin_current(cpu);
        }
        read_loop(ws, &corpus1, &tx1);
        s1.closed.store(true, Ordering::Relaxed);
        let _ = tx1.send(ToWriter::Stop);
    })?;
    let (s2, corpus2) = (Arc::clone(&state), Arc::clone(corpus));
    let writer = std::thread::Builder::new().name(format!("replay-w{id}")).spawn(move || {
        if let Some(cpu) = cpu {
            pin_current(cpu);
        }
        let mut w = Writer { out, state: s2, corpus: corpus2, rx };
        let _ = w.run();
        w.state.closed.store(true, Ordering::Relaxed);
        let _ = w.out.shutdown(std::net::Shutdown::Both);
    })?;
    Ok(Conn { state, tx, threads: vec![reader, writer] })
}

/// The client's frames: `PING`, or a subscription (`assets_ids` with `type: market` or
/// `operation: subscribe|unsubscribe`, `initial_dump`, `custom_feature_enabled`).
fn read_loop(mut ws: tungstenite::WebSocket<TcpStream>, corpus: &Corpus, tx: &Sender<ToWriter>) {
    loop {
        let text = match ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => return,
            Ok(_) => continue,
        };
        let msg = if text.as_str() == "PING" {
            ToWriter::Ping
        } else {
            let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
            let tokens: Vec<u32> = v["assets_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| corpus.token_index.get(t.as_str()?).copied())
                .collect();
            if v["operation"].as_str().is_some_and(|o| o.eq_ignore_ascii_case("unsubscribe")) {
                ToWriter::Unsubscribe(tokens)
            } else {
                let custom = v["custom_feature_enabled"].as_bool();
                ToWriter::Subscribe { tokens, custom, dump: v["initial_dump"] != false }
            }
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

struct Writer {
    out: TcpStream,
    state: Arc<ConnState>,
    corpus: Arc<Corpus>,
    rx: Receiver<ToWriter>,
}

/// Whether the writer goes on after a message.
enum Next {
    Go,
    Stop,
}

impl Writer {
    fn run(&mut self) -> std::io::Result<()> {
        while let Ok(m) = self.rx.recv() {
            let next = match m {
                ToWriter::Stream(s) => {
                    let r = self.stream(&s);
                    *self.state.finished.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Instant::now());
                    r?
                }
                other => self.handle(other)?,
            };
            if let Next::Stop = next {
                break;
            }
        }
        Ok(())
    }

    fn handle(&mut self, m: ToWriter) -> std::io::Result<Next> {
        match m {
            ToWriter::Ping => {
                self.state.pings.fetch_add(1, Ordering::Relaxed);
                let mut f = Vec::with_capacity(6);
                push_text_frame(&mut f, b"PONG");
                self.out.write_all(&f)?;
            }
            ToWriter::Subscribe { tokens, custom, dump } => {
                if let Some(c) = custom {
                    self.state.custom.store(c, Ordering::Relaxed);
                }
                let fresh: Vec<u32> = {
                    let mut have = self.state.tokens.lock().unwrap_or_else(|e| e.into_inner());
                    let fresh: Vec<u32> =
                        tokens.into_iter().filter(|t| !have.contains(t)).collect();
                    have.extend(&fresh);
                    fresh
                };
                if dump {
                    // One array of the new tokens' opening books, as the venue sends it.
                    let mut text = String::from("[");
                    for (i, t) in fresh.iter().enumerate() {
                        if i > 0 {
                            text.push(',');
                        }
                        text.push_str(&self.corpus.opening[*t as usize]);
                    }
                    text.push_str("]\n");
                    let mut f = Vec::with_capacity(text.len() + 10);
                    push_text_frame(&mut f, text.as_bytes());
                    self.out.write_all(&f)?;
                    self.state.dumps_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            ToWriter::Unsubscribe(tokens) => {
                self.state
                    .tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|t| !tokens.contains(t));
            }
            ToWriter::Stream(_) => {}
            ToWriter::Stop => return Ok(Next::Stop),
        }
        Ok(Next::Go)
    }

    /// Handles what arrived meanwhile; Stop ends the stream.
    fn poll_msgs(&mut self) -> std::io::Result<Next> {
        loop {
            match self.rx.try_recv() {
                Ok(m) => {
                    if let Next::Stop = self.handle(m)? {
                        return Ok(Next::Stop);
                    }
                }
                Err(TryRecvError::Empty) => return Ok(Next::Go),
                Err(TryRecvError::Disconnected) => return Ok(Next::Stop),
            }
        }
    }

    fn stream(&mut self, s: &Stream) -> std::io::Result<Next> {
        let n = s.ends.len();
        let (mut i, mut at) = (0usize, 0usize);
        if n == 0 {
            return Ok(Next::Go);
        }
        loop {
            if i == n {
                match s.loop_for {
                    Some(d) if s.start.elapsed() < d => (i, at) = (0, 0),
                    _ => break,
                }
            }
            let allowed = match s.rate {
                None => u64::MAX,
                Some(r) => (s.start.elapsed().as_secs_f64() * r) as u64,
            };
            if s.ends[i].1 > allowed {
                if let Some(r) = s.rate {
                    let due = s.start + Duration::from_secs_f64(s.ends[i].1 as f64 / r);
                    let wait = due.saturating_duration_since(Instant::now());
                    std::thread::sleep(wait.max(PACE_QUANTUM));
                }
                if let Next::Stop = self.poll_msgs()? {
                    return Ok(Next::Stop);
                }
                continue;
            }
            let mut k = i;
            while k + 1 < n && s.ends[k + 1].1 <= allowed && s.ends[k + 1].0 - at <= CHUNK {
                k += 1;
            }
            if let Some(log) = &s.log {
                log.lock().unwrap_or_else(|e| e.into_inner()).push((s.ends[k].1, Instant::now()));
            }
            self.out.write_all(&s.buf[at..s.ends[k].0])?;
            self.state.stream_frames.fetch_add((k + 1 - i) as u64, Ordering::Relaxed);
            (i, at) = (k + 1, s.ends[k].0);
            if let Next::Stop = self.poll_msgs()? {
                return Ok(Next::Stop);
            }
        }
        Ok(Next::Go)
    }
}
