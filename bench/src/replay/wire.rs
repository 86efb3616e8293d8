//! The wire baseline: the generator flat out into a client that only counts frames (std
//! threads on the engine's CPU; tungstenite for the client handshake and the subscriptions,
//! then a plain read loop that walks WebSocket headers and skips payloads: no UTF-8 check, no
//! copy, no JSON). Flat out it is the most frames/s this generator and loopback deliver; paced
//! (`rate`) it is the floor of a reader woken by the kernel for each frame, which no design
//! that reads frames as they come can go below on this machine.

use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use polybook::protocol::encode::{subscribe_frames, SubscribeOp, IDS_PER_FRAME_MAX};
use polybook_bench::http::wait_for;
use polybook_bench::procfs::{cpu_delta, cpu_snapshot_precise, other_share};
use serde_json::{json, Value};
use tungstenite::Message;

use crate::corpus::Corpus;
use crate::pin_current;
use crate::server::{build_streams, Server, CHUNK};

#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    bytes: AtomicU64,
    ended: AtomicU64,
}

/// Counts text frames on a socket until it ends.
fn count_loop(mut s: TcpStream, c: &Counters) {
    let mut buf = vec![0u8; CHUNK];
    // `have`: bytes of an incomplete header kept at the front; `skip`: payload still to pass.
    let (mut have, mut skip) = (0usize, 0usize);
    loop {
        let n = match s.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let end = have + n;
        let (mut i, mut frames, mut bytes) = (0usize, 0u64, 0u64);
        loop {
            let k = skip.min(end - i);
            (i, skip) = (i + k, skip - k);
            if skip > 0 || end - i < 2 {
                break;
            }
            let (b0, b1) = (buf[i], buf[i + 1]);
            let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
            let (header, len) = match b1 & 0x7F {
                126 if end - i >= 4 => {
                    (4, usize::from(u16::from_be_bytes([buf[i + 2], buf[i + 3]])))
                }
                127 if end - i >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[i + 2..i + 10]);
                    (10, u64::from_be_bytes(b) as usize)
                }
                126 | 127 => break,
                n => (2, usize::from(n)),
            };
            if end - i < header + mask {
                break;
            }
            if b0 & 0x0F == 1 {
                frames += 1;
                bytes += len as u64;
            }
            (i, skip) = (i + header + mask, len);
        }
        c.frames.fetch_add(frames, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
        buf.copy_within(i..end, 0);
        have = end - i;
    }
}

fn client(url: &str, ids: &[String], cpu: usize, c: &Counters) -> Result<()> {
    pin_current(cpu);
    let addr = url.trim_start_matches("ws://").split('/').next().unwrap_or_default();
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let (mut ws, _) = tungstenite::client(url, stream).map_err(|e| anyhow!("handshake: {e}"))?;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    for f in subscribe_frames(SubscribeOp::Open, &refs, true) {
        ws.send(Message::text(f)).map_err(|e| anyhow!("subscribe: {e}"))?;
    }
    let raw = ws.get_ref().try_clone()?;
    drop(ws);
    count_loop(raw, c);
    Ok(())
}

/// Frames/s from the generator (on `gen_cpu`) into counting clients (on `client_cpu`): flat
/// out, the stream looped for `secs`; or paced at `rate` for `secs` (no loop: the corpus holds
/// that many frames); rates over the middle of the run.
pub(crate) fn wire_baseline(
    corpus: &Arc<Corpus>,
    gen_cpu: Option<usize>,
    client_cpu: usize,
    tokens_per_conn: usize,
    secs: f64,
    rate: Option<f64>,
) -> Result<Value> {
    let server = Server::start(Arc::clone(corpus), gen_cpu)?;
    let url = server.ws_url();
    let groups: Vec<Vec<String>> =
        corpus.tokens.chunks(tokens_per_conn.max(2) & !1).map(<[String]>::to_vec).collect();
    let counters = Arc::new(Counters::default());
    let mut threads = Vec::new();
    for (i, ids) in groups.iter().cloned().enumerate() {
        let (c, url) = (Arc::clone(&counters), url.clone());
        threads.push(std::thread::Builder::new().name(format!("wire-client-{i}")).spawn(
            move || {
                let _ = client(&url, &ids, client_cpu, &c);
                c.ended.fetch_add(1, Ordering::Relaxed);
            },
        )?);
    }
    let dumps: u64 = groups.iter().map(|g| g.len().div_ceil(IDS_PER_FRAME_MAX) as u64).sum();
    let result = (|| -> Result<Value> {
        wait_for("wire clients subscribed", Duration::from_secs(60), || {
            let f = counters.frames.load(Ordering::Relaxed);
            let up = server.conns().len();
            if up == groups.len() && f >= dumps {
                Ok(())
            } else {
                Err(format!("{up}/{} connections, {f}/{dumps} opening frames", groups.len()))
            }
        })?;
        let conns = server.conns();
        let window = Duration::from_secs_f64(secs);
        let (frames, loop_for) = match rate {
            None => (corpus.frames.len(), Some(window)),
            Some(r) => (((r * secs) as usize).min(corpus.frames.len()), None),
        };
        let (streams, _, _) = build_streams(corpus, &conns, frames, rate, loop_for);
        let start = server.stream(streams);
        // Measure the middle: skip the first 0.3 s and stop 0.2 s before the end.
        std::thread::sleep(Duration::from_millis(300));
        let (f0, b0) =
            (counters.frames.load(Ordering::Relaxed), counters.bytes.load(Ordering::Relaxed));
        let (cpu0, t0) = (cpu_snapshot_precise(), Instant::now());
        std::thread::sleep(window.saturating_sub(start.elapsed() + Duration::from_millis(200)));
        let (f1, b1) =
            (counters.frames.load(Ordering::Relaxed), counters.bytes.load(Ordering::Relaxed));
        let (cpu, dt) = (cpu_delta(&cpu0, &cpu_snapshot_precise()), t0.elapsed().as_secs_f64());
        let frames = f1.saturating_sub(f0);
        let per = |k: &str| cpu.get(k).copied().unwrap_or(0) as f64 / frames.max(1) as f64;
        let sent: u64 = conns.iter().map(|c| c.stream_frames.load(Ordering::Relaxed)).sum();
        Ok(json!({
            "rate_target": rate,
            "connections": groups.len(),
            "secs": dt,
            "frames": frames,
            "frames_per_s": frames as f64 / dt,
            "mb_per_s": b1.saturating_sub(b0) as f64 / dt / 1e6,
            "avg_frame_bytes": b1.saturating_sub(b0).checked_div(frames).unwrap_or(0),
            "frames_written_so_far": sent,
            "generator_cpu_ns_per_frame": per("generator"),
            "client_cpu_ns_per_frame": per("wire_client"),
            "generator_busy": cpu.get("generator").copied().unwrap_or(0) as f64 / 1e9 / dt,
            "client_busy": cpu.get("wire_client").copied().unwrap_or(0) as f64 / 1e9 / dt,
            "other_processes_share": other_share(&cpu, dt),
            "connections_lost": counters.ended.load(Ordering::Relaxed),
        }))
    })();
    server.stop();
    for t in threads {
        let _ = t.join();
    }
    result
}
