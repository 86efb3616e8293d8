//! NATS in the replay bench (issue 15): a `nats-server` of the bench's own (`--nats spawn`),
//! a consumer that takes every message the engine publishes, and the engine → NATS →
//! consumer latency of each `level` delta, from the generator's write of the frame that
//! carried the change to the consumer's receipt of the message.
//!
//! A delta names its token and the book's timestamp after the change; a `price_change` frame
//! names its market and timestamp. With the real shape on, the model gives each market's
//! order events strictly increasing timestamps, so (market, timestamp) names one frame except
//! in a run or a follow-up at one timestamp; those keys are left out (and counted), so every
//! latency measured is exact.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::corpus::Corpus;
use crate::pin_current;
use crate::streams::SendLog;

/// A `nats-server -js` on a free loopback port, stopped on drop.
pub(crate) struct NatsServer {
    child: Child,
    pub(crate) url: String,
    dir: std::path::PathBuf,
}

impl NatsServer {
    /// On `cpu` when given (with the generator and the consumer: off the data shard's CPU, as
    /// a server on another machine would be).
    pub(crate) fn spawn(cpu: Option<usize>) -> Result<NatsServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("polybook-bench-nats-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = match cpu {
            Some(c) => {
                let mut t = Command::new("taskset");
                t.args(["-c", &c.to_string(), "nats-server"]);
                t
            }
            None => Command::new("nats-server"),
        };
        let child = cmd
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start nats-server (scripts/test installs it; or pass --nats URL)")?;
        let server = NatsServer { child, url: format!("nats://127.0.0.1:{port}"), dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// The server's CPU time so far (every thread's, from schedstat), in ns.
    pub(crate) fn cpu_ns(&self) -> u64 {
        process_cpu_ns(self.child.id())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// One `level` delta as received: token index, book timestamp, when.
type Level = (u32, u64, Instant);

/// What the consumer took.
pub(crate) struct Received {
    levels: Vec<Level>,
    by_kind: BTreeMap<String, u64>,
    total: u64,
    /// The consumer thread's CPU time (ns), read before it ends.
    pub(crate) cpu_ns: u64,
    bad_json: u64,
    unknown_tokens: u64,
}

/// A consumer of every subject under the prefix, on its own thread (a tokio current-thread
/// runtime, as the engine's publisher runs), pinned with the generator.
pub(crate) struct Consumer {
    total: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<Received>>>,
}

#[derive(serde::Deserialize)]
struct Delta<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    token_id: Option<&'a str>,
    timestamp_ms: Option<u64>,
}

impl Consumer {
    /// Connects and subscribes `{prefix}.>`; returns once the server has the subscription.
    pub(crate) fn start(
        url: &str,
        prefix: &str,
        corpus: Arc<Corpus>,
        cpu: Option<usize>,
    ) -> Result<Consumer> {
        let (url, subject) = (url.to_owned(), format!("{prefix}.>"));
        let total = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let count = Arc::clone(&total);
        let thread = std::thread::Builder::new().name("nats-consumer".into()).spawn(move || {
            if let Some(c) = cpu {
                pin_current(c);
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let setup = async {
                    let client = async_nats::connect(url.as_str()).await?;
                    let sub = client.subscribe(subject).await?;
                    client.flush().await?;
                    anyhow::Ok((client, sub))
                };
                let (_client, mut sub) = match setup.await {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("nats consumer: {e}")));
                        return Err(anyhow!("nats consumer setup failed"));
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut r = Received {
                    levels: Vec::with_capacity(1 << 20),
                    by_kind: BTreeMap::new(),
                    total: 0,
                    cpu_ns: 0,
                    bad_json: 0,
                    unknown_tokens: 0,
                };
                loop {
                    let msg = tokio::select! {
                        m = sub.next() => m,
                        _ = &mut stop_rx => None,
                    };
                    let Some(msg) = msg else { break };
                    let at = Instant::now();
                    r.total += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                    let kind = msg.subject.as_str().split('.').rev().nth(1).unwrap_or("");
                    *r.by_kind.entry(kind.to_owned()).or_insert(0) += 1;
                    if kind != "delta" {
                        continue;
                    }
                    let Ok(d) = serde_json::from_slice::<Delta<'_>>(&msg.payload) else {
                        r.bad_json += 1;
                        continue;
                    };
                    if d.kind != "level" {
                        continue;
                    }
                    let tok = d.token_id.and_then(|t| corpus.token_index.get(t).copied());
                    match (tok, d.timestamp_ms) {
                        (Some(t), Some(ts)) => r.levels.push((t, ts, at)),
                        _ => r.unknown_tokens += 1,
                    }
                }
                r.cpu_ns = std::fs::read_to_string("/proc/thread-self/schedstat")
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                Ok(r)
            })
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("nats consumer did not subscribe within 10 s"),
        }
        Ok(Consumer { total, stop: Some(stop_tx), thread: Some(thread) })
    }

    pub(crate) fn received(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Waits until `done()` says the consumer has everything (or `limit` passes), then stops.
    pub(crate) fn finish(
        mut self,
        limit: Duration,
        mut done: impl FnMut(u64) -> bool,
    ) -> Result<Received> {
        let deadline = Instant::now() + limit;
        while !done(self.received()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let t = self.thread.take().ok_or_else(|| anyhow!("nats consumer already stopped"))?;
        t.join().map_err(|_| anyhow!("nats consumer thread panicked"))?
    }
}

/// Each `price_change` frame's timestamp (None for other frames).
fn frame_ts(corpus: &Corpus, i: usize) -> Option<u64> {
    let f = corpus.frames[i];
    if !f.price_change {
        return None;
    }
    let text = corpus.frame_bytes(i);
    let key = b"\"timestamp\":\"";
    let at = text.windows(key.len()).rposition(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits]).ok()?.parse().ok()
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Latency of every `level` delta whose (market, timestamp) names one frame: from the
/// generator's `write` of that frame's batch (on the first connection that carried it) to
/// the consumer's receipt.
pub(crate) fn latencies(
    corpus: &Corpus,
    cut: usize,
    routes: &[Option<(u64, usize)>],
    logs: &[SendLog],
    got: &Received,
) -> Value {
    // (market, ts) -> frame, or usize::MAX when several frames share the key.
    let mut key: HashMap<(u32, u64), usize> = HashMap::new();
    for i in 0..cut {
        if let Some(ts) = frame_ts(corpus, i) {
            key.entry((corpus.frames[i].market, ts)).and_modify(|v| *v = usize::MAX).or_insert(i);
        }
    }
    let logs: Vec<Vec<(u64, Instant)>> =
        logs.iter().map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect();
    let (mut ns, mut shared_key, mut unsent, mut not_in_run) = (Vec::new(), 0u64, 0u64, 0u64);
    for &(tok, ts, at) in &got.levels {
        let Some(&i) = key.get(&(tok / 2, ts)) else {
            // A change from outside the run (an opening book's era, a REST resync).
            not_in_run += 1;
            continue;
        };
        if i == usize::MAX {
            shared_key += 1;
            continue;
        }
        let Some((due, conn)) = routes.get(i).copied().flatten() else {
            unsent += 1;
            continue;
        };
        let log = &logs[conn];
        let w = log.partition_point(|&(last, _)| last < due);
        let Some(&(_, sent)) = log.get(w) else {
            unsent += 1;
            continue;
        };
        ns.push(at.saturating_duration_since(sent).as_nanos() as u64);
    }
    ns.sort_unstable();
    json!({
        "level_deltas_received": got.levels.len(),
        "measured": ns.len(),
        "left_out_shared_timestamp": shared_key,
        "left_out_not_in_run": not_in_run,
        "left_out_unsent": unsent,
        "p50": pct(&ns, 0.50), "p90": pct(&ns, 0.90), "p99": pct(&ns, 0.99),
        "p999": pct(&ns, 0.999), "max": ns.last().copied().unwrap_or(0),
    })
}

/// The consumer's counts, for the step's JSON.
pub(crate) fn received_json(r: &Received) -> Value {
    json!({
        "total": r.total,
        "cpu_ns": r.cpu_ns,
        "by_kind": r.by_kind,
        "bad_json": r.bad_json,
        "unknown_tokens": r.unknown_tokens,
    })
}
