//! `[publish.nats]` end to end, against a real `nats-server` (Debian's package; `.ci/test`
//! installs it): a consumer that knows only NATS (the JetStream last snapshot per token, then
//! deltas with a greater `seq`, a `seq` jump answered by the next snapshot) rebuilds every
//! book and equals the simulator's truth at rest; two instances with `partition = "0/2"` and
//! `"1/2"` carry every market exactly once; a NATS restart mid-run leaves the engine applying
//! and the consumer recovers through snapshots; a consumer too slow for the server (cut by it)
//! changes nothing in the engine's counters.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use polybook_shards::config::ValidConfig;
use polybook_shards::engine::{self, EngineHandle};
use polybook_shards::sim_server::SimServerHandle;
use polybook_testkit::book_json::{price_units, side_map};
use serde_json::Value;

const PREFIX: &str = "polybook";

/// A `nats-server` child on a loopback port with its own store dir, killed on drop.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor: u16,
    dir: PathBuf,
    conf: Option<PathBuf>,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    l.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"))
}

impl NatsServer {
    /// Starts a server; `max_pending` (bytes a client may have waiting before the server cuts
    /// it as a slow consumer) goes through a config file when given.
    fn start(name: &str, max_pending: Option<u64>) -> NatsServer {
        let dir = std::env::temp_dir().join(format!("polybook-nats-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let conf = max_pending.map(|bytes| {
            let path = dir.join("nats.conf");
            // max_payload may not exceed max_pending; snapshots are a few KiB.
            let text = format!(
                "max_pending: {bytes}\nmax_payload: {}\nwrite_deadline: \"1s\"\n",
                bytes / 2
            );
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            path
        });
        let mut s = NatsServer { child: None, port: free_port(), monitor: free_port(), dir, conf };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("nats-server");
        if let Some(conf) = &self.conf {
            cmd.arg("-c").arg(conf);
        }
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string(), "-js", "-sd"])
            .arg(self.dir.join("store"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "nats-server is not installed: `apt-get install -y nats-server` (.ci/test \
                 installs it); these tests need a real server"
            ),
            Err(e) => panic!("cannot start nats-server: {e}"),
        };
        self.child = Some(child);
        let port = self.monitor;
        wait_for("nats-server up with JetStream", Duration::from_secs(20), || {
            let (status, v) = http_get(port, "/jsz");
            if status == 200 && v["config"].is_object() {
                Ok(())
            } else {
                Err(format!("{status} {v}"))
            }
        });
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn varz(&self) -> Value {
        http_get(self.monitor, "/varz").1
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A GET to the server's monitoring port (plain HTTP/1.0); (0, Null) when it is not up.
fn http_get(port: u16, path: &str) -> (u16, Value) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return (0, Value::Null) };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, Value::Null);
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// One token's book as rebuilt from NATS alone.
#[derive(Default, Debug)]
struct NatsBook {
    seq: u64,
    /// A `seq` jump was seen: deltas wait for the next snapshot.
    gapped: bool,
    bids: BTreeMap<u64, String>,
    asks: BTreeMap<u64, String>,
    tick_size: Value,
    status: Value,
}

#[derive(Default)]
struct Books {
    books: HashMap<String, NatsBook>,
    snapshots: u64,
    deltas_applied: u64,
    gaps: u64,
    stream_reads: u64,
    /// Snapshots that found the delta-built book equal to them, and those that did not.
    confirmed: u64,
    contradicted: Vec<String>,
}

impl Books {
    fn snapshot(&mut self, msg: &Value) {
        let Some(token) = msg["token_id"].as_str() else { return };
        if msg["type"] == "reset" {
            self.books.remove(token);
            return;
        }
        if msg["type"] != "snapshot" {
            return;
        }
        let seq = msg["seq"].as_u64().unwrap_or(0);
        let b = self.books.entry(token.to_owned()).or_default();
        let book = &msg["book"];
        // A snapshot at the seq the deltas reached checks them: the book built from deltas
        // must be the engine's book at that seq.
        if seq == b.seq && !b.gapped && !b.status.is_null() {
            let same = b.bids == side_map(&book["bids"])
                && b.asks == side_map(&book["asks"])
                && b.tick_size == book["tick_size"]
                && b.status == book["status"];
            if same {
                self.confirmed += 1;
            } else {
                self.contradicted.push(format!("{token} at seq {seq}"));
            }
            return;
        }
        // An older snapshot (JetStream read after live messages) changes nothing.
        if seq < b.seq {
            return;
        }
        b.bids = side_map(&book["bids"]);
        b.asks = side_map(&book["asks"]);
        b.tick_size = book["tick_size"].clone();
        b.status = book["status"].clone();
        b.seq = seq;
        b.gapped = false;
        self.snapshots += 1;
    }

    fn delta(&mut self, msg: &Value) {
        if msg["type"] == "snapshot" || msg["type"] == "reset" {
            return self.snapshot(msg);
        }
        let Some(token) = msg["token_id"].as_str() else { return };
        let seq = msg["seq"].as_u64().unwrap_or(0);
        let Some(b) = self.books.get_mut(token) else { return };
        if b.status.is_null() || seq <= b.seq {
            return;
        }
        if seq != b.seq + 1 {
            if !b.gapped {
                self.gaps += 1;
            }
            b.gapped = true;
        }
        if b.gapped {
            return;
        }
        b.seq = seq;
        self.deltas_applied += 1;
        match msg["type"].as_str() {
            Some("level") => {
                let side = if msg["side"] == "BUY" { &mut b.bids } else { &mut b.asks };
                let price = price_units(msg["price"].as_str().unwrap_or("0"));
                match msg["size"].as_str() {
                    Some("0") | None => {
                        side.remove(&price);
                    }
                    Some(size) => {
                        side.insert(price, size.to_owned());
                    }
                }
            }
            Some("tick_size") => b.tick_size = msg["tick_size"].clone(),
            Some("status") => b.status = msg["status"].clone(),
            _ => {}
        }
    }
}

/// A consumer on its own thread and tokio runtime: live subscriptions to deltas and
/// snapshots, and the JetStream stream's last snapshot per token read at start and after every
/// reconnect of its own.
struct Consumer {
    books: Arc<Mutex<Books>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Consumer {
    fn start(url: &str) -> Consumer {
        let books = Arc::new(Mutex::new(Books::default()));
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let (url, shared) = (url.to_owned(), Arc::clone(&books));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let rt = rt.unwrap_or_else(|e| panic!("runtime: {e}"));
            rt.block_on(consume(url, shared, stop_rx, ready_tx));
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("consumer did not subscribe: {e}"));
        Consumer { books, stop: Some(stop), thread: Some(thread) }
    }

    fn with<T>(&self, f: impl FnOnce(&Books) -> T) -> T {
        f(&self.books.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn consume(
    url: String,
    books: Arc<Mutex<Books>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<()>,
) {
    let (up_tx, mut up_rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .event_callback(move |ev| {
            let up = up_tx.clone();
            async move {
                if matches!(ev, async_nats::Event::Connected) {
                    let _ = up.send(());
                }
            }
        })
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("consumer connect: {e}"));
    let mut deltas = client
        .subscribe(format!("{PREFIX}.delta.>"))
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let mut snaps = client
        .subscribe(format!("{PREFIX}.snapshot.>"))
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let _ = client.flush().await;
    let _ = ready.send(());
    let js = async_nats::jetstream::new(client.clone());
    // The stored snapshots are read once now and again after each reconnect (the live
    // subscriptions are in place first, so nothing falls between the two).
    let mut read_due = true;
    let mut retry = tokio::time::interval(Duration::from_millis(300));
    let parse = |payload: &[u8]| serde_json::from_slice::<Value>(payload).unwrap_or(Value::Null);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = up_rx.recv() => read_due = true,
            Some(m) = deltas.next() => {
                let v = parse(&m.payload);
                books.lock().unwrap_or_else(|e| e.into_inner()).delta(&v);
            }
            Some(m) = snaps.next() => {
                let v = parse(&m.payload);
                books.lock().unwrap_or_else(|e| e.into_inner()).snapshot(&v);
            }
            _ = retry.tick(), if read_due => {
                let read = read_stored_snapshots(&js, &books);
                // Until the engine has made the stream (after a server restart too), this fails
                // with "stream not found" and is tried again.
                if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(5), read).await {
                    read_due = false;
                }
            }
        }
    }
}

/// Every token's last snapshot from the JetStream stream (a pull consumer delivering the last
/// message per subject).
async fn read_stored_snapshots(
    js: &async_nats::jetstream::Context,
    books: &Arc<Mutex<Books>>,
) -> Result<(), String> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let stream = js.get_stream("POLYBOOK_SNAPSHOTS").await.map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::LastPerSubject,
            ack_policy: AckPolicy::Explicit,
            filter_subject: format!("{PREFIX}.snapshot.>"),
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    // Snapshots keep arriving while this reads: take what was stored when the consumer was
    // made (one per token); the live subscription has everything after.
    let mut left = consumer.cached_info().num_pending;
    while left > 0 {
        let want = left.min(500) as usize;
        let mut batch =
            consumer.fetch().max_messages(want).messages().await.map_err(|e| e.to_string())?;
        let mut n = 0;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| e.to_string())?;
            let v = serde_json::from_slice::<Value>(&m.payload).unwrap_or(Value::Null);
            books.lock().unwrap_or_else(|e| e.into_inner()).snapshot(&v);
            let _ = m.ack().await;
            n += 1;
        }
        if n == 0 {
            break;
        }
        left = left.saturating_sub(n);
    }
    books.lock().unwrap_or_else(|e| e.into_inner()).stream_reads += 1;
    Ok(())
}

fn nats_engine(
    sim: &SimServerHandle,
    url: &str,
    partition: Option<&str>,
    capacity: usize,
) -> ValidConfig {
    engine_config_with(sim, 40, |c| {
        c.publish.nats.url = Some(url.to_owned());
        c.publish.nats.snapshot_interval_ms = 200;
        c.publish.nats.channel_capacity = capacity;
        c.selection.partition = partition.map(str::to_owned);
    })
}

fn start(cfg: &ValidConfig) -> EngineHandle {
    engine::start(cfg).unwrap_or_else(|e| panic!("{e}"))
}

/// Every active token the simulator has, with its truth, equals the consumer's book
/// (levels, tick size; a live or, after the pause, stale status).
fn consumer_equals_truth(c: &Consumer, sim: &SimServerHandle) -> Result<usize, String> {
    let mut n = 0;
    for (token, active) in sim_tokens(sim) {
        if !active {
            continue;
        }
        let (_, truth) = get(&format!("{}/sim/book/{token}", sim.http_url()));
        let verdict = c.with(|b| {
            let Some(ours) = b.books.get(&token) else { return Err(format!("{token}: no book")) };
            if ours.gapped {
                return Err(format!("{token}: gapped at seq {}", ours.seq));
            }
            if ours.bids != side_map(&truth["bids"]) || ours.asks != side_map(&truth["asks"]) {
                return Err(format!("{token}: levels differ at seq {}", ours.seq));
            }
            if ours.tick_size != truth["tick_size"] {
                return Err(format!("{token}: tick {} vs {}", ours.tick_size, truth["tick_size"]));
            }
            if ours.status != "live" && ours.status != "stale" {
                return Err(format!("{token}: status {}", ours.status));
            }
            Ok(())
        });
        verdict?;
        n += 1;
    }
    Ok(n)
}

fn nats_stats(engine: &EngineHandle) -> Value {
    stats(engine)["nats"].clone()
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Condition ids of the markets the engine carries.
fn engine_markets(engine: &EngineHandle) -> HashSet<String> {
    let (_, list) = get(&format!("http://{}/markets?limit=1000", engine.api_addr()));
    list["markets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["condition_id"].as_str().map(str::to_owned))
        .collect()
}

/// Condition ids of the simulator's active markets.
fn sim_active_markets(sim: &SimServerHandle) -> HashSet<String> {
    let (_, markets) = get(&format!("{}/sim/markets", sim.http_url()));
    markets
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["active"] == true)
        .filter_map(|m| m["condition_id"].as_str().map(str::to_owned))
        .collect()
}

/// Condition ids of the markets the simulator lists.
fn sim_markets(sim: &SimServerHandle) -> Vec<String> {
    let (_, markets) = get(&format!("{}/sim/markets", sim.http_url()));
    markets
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["condition_id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn two_partitions_rebuild_every_book_from_nats_alone() {
    let nats = NatsServer::start("partitions", None);
    let sim = sim(71, 24, 400.0);
    let consumer = Consumer::start(&nats.url());
    let a = start(&nats_engine(&sim, &nats.url(), Some("0/2"), 1 << 16));
    let b = start(&nats_engine(&sim, &nats.url(), Some("1/2"), 1 << 16));
    let all = sim_markets(&sim);
    assert!(all.len() >= 24, "sim markets: {}", all.len());
    let want = |i: u32| -> u64 {
        let n = all.iter().filter(|m| polybook::routing::partition_for(m, 2) == i).count();
        2 * n as u64
    };
    assert!(want(0) > 0 && want(1) > 0, "both partitions hold markets");
    wait_for("instance 0 settled", Duration::from_secs(60), || all_books_settled(&a, want(0)));
    wait_for("instance 1 settled", Duration::from_secs(60), || all_books_settled(&b, want(1)));
    wait_for("deltas flow through NATS", Duration::from_secs(30), || {
        let applied = consumer.with(|b| b.deltas_applied);
        if applied > 200 {
            Ok(())
        } else {
            Err(format!("{applied} deltas applied"))
        }
    });
    wait_at_rest(&sim.http_url());
    let n = wait_for("books from NATS equal the truth", Duration::from_secs(30), || {
        consumer_equals_truth(&consumer, &sim)
    });
    // The simulator lists new markets as it runs: judge the split on its final listing.
    wait_for("every market on exactly one instance", Duration::from_secs(30), || {
        let (ma, mb) = (engine_markets(&a), engine_markets(&b));
        if let Some(m) = ma.intersection(&mb).next() {
            return Err(format!("{m} on both instances"));
        }
        let active: HashSet<String> = sim_active_markets(&sim);
        let missing: Vec<&String> =
            active.iter().filter(|m| !ma.contains(*m) && !mb.contains(*m)).collect();
        if !missing.is_empty() {
            return Err(format!("on no instance: {missing:?}"));
        }
        for (i, set) in [(0, &ma), (1, &mb)] {
            if let Some(m) = set.iter().find(|m| polybook::routing::partition_for(m, 2) != i) {
                return Err(format!("{m} on instance {i}"));
            }
        }
        Ok(())
    });
    assert!(n as u64 >= want(0) + want(1), "{n} books checked");
    let (sa, sb) = (nats_stats(&a), nats_stats(&b));
    for s in [&sa, &sb] {
        assert_eq!(s["connected"], true, "{s}");
        assert!(u(s, "published") > 0, "{s}");
        assert_eq!(u(s, "dropped_at_shards"), 0, "{s}");
    }
    let (gaps, applied, reads) = consumer.with(|b| (b.gaps, b.deltas_applied, b.stream_reads));
    let (confirmed, contradicted) = consumer.with(|b| (b.confirmed, b.contradicted.clone()));
    eprintln!(
        "consumer: {applied} deltas applied, {gaps} gaps, {reads} stream reads, \
         {confirmed} snapshots confirmed the deltas"
    );
    assert!(contradicted.is_empty(), "deltas disagree with snapshots: {contradicted:?}");
    assert!(confirmed > 20, "only {confirmed} snapshots checked the deltas");
    let text = common::agent()
        .get(&format!("http://{}/metrics", a.api_addr()))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default();
    for family in ["polybook_nats_connected 1", "polybook_nats_published_messages_total "] {
        assert!(text.contains(family), "/metrics lacks {family}");
    }
    drop(consumer);
    a.stop();
    b.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn nats_restart_mid_run_engine_stays_up_and_consumers_recover() {
    let mut nats = NatsServer::start("restart", None);
    let sim = sim(72, 16, 400.0);
    let consumer = Consumer::start(&nats.url());
    let engine = start(&nats_engine(&sim, &nats.url(), None, 1 << 16));
    let api = engine.api_addr().to_string();
    wait_for("books live", Duration::from_secs(60), || all_books_settled(&engine, 32));
    wait_for("published", Duration::from_secs(20), || {
        let s = nats_stats(&engine);
        if s["connected"] == true && u(&s, "published") > 100 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    nats.kill();
    wait_for("engine sees NATS down", Duration::from_secs(20), || {
        let s = nats_stats(&engine);
        if s["connected"] == false && u(&s, "disconnects") >= 1 {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    // The feed goes on while NATS is down: frames are applied, drained messages counted.
    let frames_down = total(&stats(&engine), "frames");
    wait_for("engine applies while NATS is down", Duration::from_secs(30), || {
        let s = stats(&engine);
        let dropped = u(&s["nats"], "dropped_disconnected");
        if total(&s, "frames") > frames_down + 50 && dropped > 0 {
            Ok(())
        } else {
            Err(format!("frames {} (down at {frames_down}), {}", total(&s, "frames"), s["nats"]))
        }
    });
    assert_eq!(get(&format!("http://{api}/health")).0, 200);
    let ready = get(&format!("http://{api}/ready")).1;
    assert_eq!(ready["nats_connected"], false, "{ready}");
    nats.spawn();
    let s = wait_for("engine reconnects and republishes", Duration::from_secs(30), || {
        let s = nats_stats(&engine);
        if s["connected"] == true && u(&s, "reconnects") >= 1 && u(&s, "republished") >= 32 {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    assert!(s["last_error"].is_string() || s["last_error"].is_null(), "{s}");
    wait_at_rest(&sim.http_url());
    let n = wait_for("books from NATS equal the truth", Duration::from_secs(30), || {
        consumer_equals_truth(&consumer, &sim)
    });
    assert!(n >= 32, "{n} books checked");
    assert!(consumer.with(|b| b.stream_reads) >= 1);
    let contradicted = consumer.with(|b| b.contradicted.clone());
    assert!(contradicted.is_empty(), "deltas disagree with snapshots: {contradicted:?}");
    compare_with_truth(&engine, &sim, &|_, _| false).unwrap_or_else(|e| panic!("{e}"));
    drop(consumer);
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// A NATS client that subscribes to everything and never reads, with a small receive buffer.
fn stalled_subscriber(port: u16) -> socket2::Socket {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap_or_else(|e| panic!("{e}"));
    let _ = s.set_recv_buffer_size(4096);
    let addr: std::net::SocketAddr =
        format!("127.0.0.1:{port}").parse().unwrap_or_else(|e| panic!("{e}"));
    s.connect(&addr.into()).unwrap_or_else(|e| panic!("connect: {e}"));
    let hello = "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"stalled\"}\r\n\
                 SUB polybook.> 1\r\nPING\r\n";
    let mut w: &Socket = &s;
    w.write_all(hello.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    s
}

#[test]
fn slow_consumer_is_cut_by_the_server_and_the_engine_does_not_notice() {
    let nats = NatsServer::start("slow", Some(256 << 10));
    let sim = sim(73, 30, 1000.0);
    let engine = start(&nats_engine(&sim, &nats.url(), None, 1 << 16));
    wait_for("books live", Duration::from_secs(60), || {
        let live = total(&stats(&engine), "books_live");
        if live >= 40 {
            Ok(())
        } else {
            Err(format!("{live} books live"))
        }
    });
    let before = stats(&engine);
    let _stalled = stalled_subscriber(nats.port);
    wait_for("the server cuts the stalled subscriber", Duration::from_secs(90), || {
        let v = nats.varz();
        if u(&v, "slow_consumers") >= 1 {
            Ok(())
        } else {
            Err(format!("slow_consumers {}, out_bytes {}", v["slow_consumers"], v["out_bytes"]))
        }
    });
    let after = stats(&engine);
    // The engine went on applying and publishing, and lost nothing at its shards.
    assert!(total(&after, "frames") > total(&before, "frames"), "frames advance");
    let (b, a) = (&before["nats"], &after["nats"]);
    assert!(u(a, "published") > u(b, "published"), "{a}");
    assert_eq!(u(a, "dropped_at_shards"), 0, "{a}");
    assert_eq!(u(a, "publish_errors"), 0, "{a}");
    assert_eq!(u(a, "disconnects"), 0, "{a}");
    assert_eq!(a["connected"], true, "{a}");
    wait_at_rest(&sim.http_url());
    wait_for("engine books equal the truth", Duration::from_secs(30), || {
        compare_with_truth(&engine, &sim, &|_, _| false)
    });
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// The README's consumer (`examples/nats_consumer.py`, nats-py) keeps every book: at rest its
/// top of book is the truth's. `.ci/test` installs nats-py; without it this fails.
#[test]
fn python_example_keeps_the_books() {
    use std::io::BufRead;
    let nats = NatsServer::start("python", None);
    let sim = sim(74, 30, 300.0);
    let engine = start(&nats_engine(&sim, &nats.url(), None, 1 << 16));
    wait_for("books live", Duration::from_secs(60), || all_books_settled(&engine, 60));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/nats_consumer.py");
    let mut py = Command::new("python3")
        .arg(script)
        .args(["--url", &nats.url(), "--until-eof", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3: {e} (the NATS example needs python3 + nats-py)"));
    let mut out = std::io::BufReader::new(py.stdout.take().unwrap_or_else(|| panic!("stdout")));
    let mut first = String::new();
    let _ = out.read_line(&mut first);
    if !first.starts_with("ready") && !first.starts_with("no snapshot stream") {
        let mut err = String::new();
        if let Some(mut e) = py.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        panic!("nats_consumer.py did not start (pip install nats-py; .ci/test does): {first}{err}");
    }
    wait_at_rest(&sim.http_url());
    // At rest the engine's last snapshots go out within snapshot_interval_ms; wait until it
    // has published nothing new for a while before ending the consumer.
    let mut last = u64::MAX;
    wait_for("engine publishing settles", Duration::from_secs(30), || {
        let p = u(&nats_stats(&engine), "published");
        let quiet = p == last;
        last = p;
        std::thread::sleep(Duration::from_millis(800));
        if quiet {
            Ok(())
        } else {
            Err(format!("published {p}"))
        }
    });
    drop(py.stdin.take());
    let mut text = String::new();
    let _ = out.read_to_string(&mut text);
    let _ = py.wait();
    let summary = text.lines().find(|l| l.starts_with("summary")).unwrap_or_default();
    let tops: HashMap<String, (String, String)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("book ")?.split(' ');
            let token = f.next()?.to_owned();
            let field = |k: &str, f: &[&str]| {
                f.iter().find_map(|x| x.strip_prefix(k)).unwrap_or("None").to_owned()
            };
            let rest: Vec<&str> = f.collect();
            Some((token, (field("bid=", &rest), field("ask=", &rest))))
        })
        .collect();
    let best = |levels: &Value, max: bool| {
        let prices = levels.as_array().into_iter().flatten().filter_map(|l| l[0].as_str());
        let by_units = prices.map(|p| (price_units(p), p.to_owned()));
        let pick = if max { by_units.max() } else { by_units.min() };
        pick.map_or("None".to_owned(), |(_, p)| p)
    };
    let mut checked = 0;
    for (token, active) in sim_tokens(&sim) {
        if !active {
            continue;
        }
        let (_, truth) = get(&format!("{}/sim/book/{token}", sim.http_url()));
        let want = (best(&truth["bids"], true), best(&truth["asks"], false));
        let have = tops.get(&token).unwrap_or_else(|| panic!("{token}: no book; {summary}"));
        assert_eq!(have, &want, "{token}: python top of book vs truth; {summary}");
        checked += 1;
    }
    assert!(checked > 0, "no active book to check; {summary}");
    assert!(summary.contains("deltas=") && !summary.contains("deltas=0 "), "{summary}");
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}
