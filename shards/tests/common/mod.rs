//! Helpers shared by the end-to-end tests: blocking HTTP to the engine and the simulator that
//! panics on failure, TLS simulators, and the tests' engine settings. What the load harness
//! needs too (deadlines, the truth comparison, book JSON) is in `polybook-testkit`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_rustls::pki_types::CertificateDer;
use polybook_shards::config::{Config, DataCores, ValidConfig};
use polybook_shards::engine::EngineHandle;
use polybook_shards::sim_server::{
    spawn_sim_server, SimServerConfig, SimServerHandle, TlsIdentity,
};
use polybook_testkit::{compare_book, BookMismatch, Compared};
use serde_json::Value;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// Certificates of the TLS simulators started by this test binary; the helpers' own requests
/// trust exactly these (tests never reach a real venue, so no webpki roots).
static TRUSTED: Mutex<Vec<CertificateDer<'static>>> = Mutex::new(Vec::new());

/// What the helpers' requests call themselves: not the engine's name, so a test that checks
/// the User-Agent the simulator saw cannot be fooled by its own requests.
pub const TEST_USER_AGENT: &str = "polybook-tests";

pub fn agent() -> ureq::Agent {
    let trusted = TRUSTED.lock().map(|t| t.clone()).unwrap_or_default();
    agent_trusting(&trusted)
}

pub fn get(url: &str) -> (u16, Value) {
    match agent().get(url).call() {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let body = r.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&body).unwrap_or(Value::Null))
        }
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// A response read whole, for the tests that drive a server on their own executor.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// One request with `agent` (ureq, blocking) on glommio's blocking pool: a test on an executor
/// can call a server that runs on the same executor. `body` is (content type, bytes).
pub async fn http_with(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<(&str, &[u8])>,
) -> Result<HttpResponse, String> {
    let (agent, method, url) = (agent.clone(), method.to_owned(), url.to_owned());
    let body = body.map(|(t, b)| (t.to_owned(), b.to_vec()));
    let call = move || -> Result<HttpResponse, String> {
        let mut req = ureq::http::Request::builder().method(method.as_str()).uri(url.as_str());
        if let Some((t, _)) = &body {
            req = req.header("content-type", t.as_str());
        }
        let bytes = body.map(|(_, b)| b).unwrap_or_default();
        let req = req.body(bytes).map_err(|e| e.to_string())?;
        let mut resp = agent.run(req).map_err(|e| e.to_string())?;
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok(HttpResponse { status: resp.status().as_u16(), headers, body })
    };
    glommio::executor().spawn_blocking(call).await
}

/// [`http_with`] with the helpers' [`agent`].
pub async fn http(
    method: &str,
    url: &str,
    body: Option<(&str, &[u8])>,
) -> Result<HttpResponse, String> {
    http_with(&agent(), method, url, body).await
}

pub async fn http_get(url: &str) -> Result<HttpResponse, String> {
    http("GET", url, None).await
}

pub async fn http_post_json<T: serde::Serialize + ?Sized>(
    url: &str,
    body: &T,
) -> Result<HttpResponse, String> {
    let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    http("POST", url, Some(("application/json", &bytes))).await
}

/// An agent like [`agent`] that trusts exactly `roots`.
pub fn agent_trusting(roots: &[CertificateDer<'static>]) -> ureq::Agent {
    let roots: Vec<Certificate<'static>> =
        roots.iter().map(|c| Certificate::from_der(c.as_ref()).to_owned()).collect();
    // Explicit: ureq's default roots (WebPki) panic with the features this crate builds it with.
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(polybook_shards::net::ring_provider())
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .user_agent(TEST_USER_AGENT)
        .tls_config(tls)
        .build()
        .into()
}

/// GET as text: (status, body).
pub fn get_text(url: &str) -> (u16, String) {
    match agent().get(url).call() {
        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

pub fn post(url: &str, body: &str) -> u16 {
    match agent().post(url).header("content-type", "application/json").send(body) {
        Ok(r) => r.status().as_u16(),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// Polls `f` until it returns Ok, or panics with the last state after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, f: impl FnMut() -> Result<T, String>) -> T {
    polybook_testkit::poll_until(what, limit, Duration::from_millis(200), f)
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn engine_config(sim: &SimServerHandle, tokens_per_conn: usize) -> ValidConfig {
    engine_config_with(sim, tokens_per_conn, |_| {})
}

/// [`engine_config`] with changes of the test's own.
pub fn engine_config_with(
    sim: &SimServerHandle,
    tokens_per_conn: usize,
    change: impl FnOnce(&mut Config),
) -> ValidConfig {
    let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let mut c = polybook_testkit::config_for_sim(&sim.http_url(), &sim.ws_url());
    c.layout.control_core = 0;
    c.layout.data_cores = DataCores::List(vec![0, 1 % cpus]);
    c.connections.tokens_per_conn_target = tokens_per_conn;
    c.connections.ping_interval_ms = 1000;
    c.connections.pong_timeout_ms = 10_000;
    c.connections.data_silence_ms = 20_000;
    c.connections.first_book_timeout_ms = 5000;
    c.connections.reconnect_delay_ms_min = 50;
    c.connections.reconnect_delay_ms_max = 1000;
    c.discovery.interval_ms = 1000;
    change(&mut c);
    c.validate().unwrap_or_else(|e| panic!("config: {e}"))
}

/// The real venue's traffic shape (same-timestamp runs, cascades, hashes ahead, trades hashed
/// before they are announced) for tests that compare every book with the truth at rest. Stale
/// opening books are left out here: one whose own hash matches its stale levels, on a token
/// that then never changes, cannot be told from the truth by any client until the venue sends
/// a new `book`, so exact equality at rest would be luck. Their detection is tested on its own
/// (`tests/real_shape_integrity.rs`, `tests/sim_model.rs`).
pub fn exact_shape() -> polybook::sim::RealShape {
    polybook::sim::RealShape { stale_snapshot_permille: 0, ..polybook::sim::RealShape::default() }
}

/// A simulator with [`exact_shape`] traffic.
pub fn sim(seed: u64, markets: usize, rate: f64) -> SimServerHandle {
    spawn_sim_server(SimServerConfig {
        seed,
        markets,
        rate,
        real_shape: exact_shape(),
        ..SimServerConfig::default()
    })
    .unwrap_or_else(|e| panic!("sim: {e}"))
}

/// A simulator serving https and wss with a fresh self-signed certificate, which the helpers
/// trust; returns it with the certificate's PEM file (for `tls_roots_file`).
pub fn tls_sim(seed: u64, markets: usize, rate: f64) -> (SimServerHandle, PathBuf) {
    let id = TlsIdentity::self_signed_localhost().unwrap_or_else(|e| panic!("identity: {e}"));
    if let Ok(mut t) = TRUSTED.lock() {
        t.push(id.cert_der().clone());
    }
    let cfg = SimServerConfig {
        seed,
        markets,
        rate,
        tls: Some(id),
        real_shape: exact_shape(),
        ..SimServerConfig::default()
    };
    let sim = spawn_sim_server(cfg).unwrap_or_else(|e| panic!("sim: {e}"));
    let pem = std::env::temp_dir().join(format!(
        "polybook-test-{}-{}.pem",
        std::process::id(),
        sim.addr().port()
    ));
    std::fs::write(&pem, sim.cert_pem().unwrap_or_default())
        .unwrap_or_else(|e| panic!("write {}: {e}", pem.display()));
    (sim, pem)
}

/// The same engine config with `endpoints.tls_roots_file` set (or cleared), validated again.
pub fn with_tls_roots(cfg: ValidConfig, roots: Option<&Path>) -> ValidConfig {
    let mut c = (*cfg).clone();
    c.endpoints.tls_roots_file = roots.map(|p| p.display().to_string());
    c.validate().unwrap_or_else(|e| panic!("config: {e}"))
}

pub fn stats(engine: &EngineHandle) -> Value {
    get(&format!("http://{}/stats", engine.api_addr())).1
}

pub fn total(stats: &Value, key: &str) -> u64 {
    stats["totals"][key].as_u64().unwrap_or(0)
}

/// Every market the simulator lists: (token, active).
pub fn sim_tokens(sim: &SimServerHandle) -> Vec<(String, bool)> {
    let (_, markets) = get(&format!("{}/sim/markets", sim.http_url()));
    polybook_testkit::sim_tokens(&markets).into_iter().map(|t| (t.id, t.active)).collect()
}

pub fn all_books_settled(engine: &EngineHandle, want_books: u64) -> Result<Value, String> {
    let s = stats(engine);
    match polybook_testkit::books_settled(&s, want_books) {
        Ok(()) => Ok(s),
        Err(e) => Err(format!("{e}: {}", s["totals"])),
    }
}

/// Compares every book the simulator has with the engine's: status, levels and tick size;
/// last trade for the tokens in `check_trade` (a trade missed while a connection was down
/// cannot be recovered: the venue replays nothing and snapshots carry no trade details).
/// Returns the truth's last trades, or the first difference.
pub fn compare_with_truth(
    engine: &EngineHandle,
    sim: &SimServerHandle,
    check_trade: &dyn Fn(&str, &Value) -> bool,
) -> Result<std::collections::HashMap<String, Value>, String> {
    let mut trades = std::collections::HashMap::new();
    for (token, active) in sim_tokens(sim) {
        let (_, truth) = get(&format!("{}/sim/book/{token}", sim.http_url()));
        let (status, ours) = get(&format!("http://{}/books/{token}", engine.api_addr()));
        // The status and the market's state say which rule let a wrong book through.
        let differs = |key: &str| {
            format!(
                "{token}: {key} differs: ours {} truth {} (status {}, market active {active})",
                ours[key], truth[key], ours["status"]
            )
        };
        match compare_book(&truth, status, &ours, active) {
            Ok(Compared::SkippedResolved) => continue,
            Ok(Compared::Equal { last_trade_equal }) => {
                if !last_trade_equal && check_trade(&token, &truth["last_trade"]) {
                    return Err(differs("last_trade"));
                }
            }
            Err(BookMismatch::Field { key }) => return Err(differs(key)),
            Err(e) => return Err(format!("{token}: {e}")),
        }
        trades.insert(token, truth["last_trade"].clone());
    }
    Ok(trades)
}

pub fn wait_at_rest(base: &str) {
    assert_eq!(post(&format!("{base}/sim/pause"), ""), 200);
    wait_for("sim at rest", Duration::from_secs(30), || {
        let (_, st) = get(&format!("{base}/sim/status"));
        if st["at_rest"] == true {
            Ok(())
        } else {
            Err(st.to_string())
        }
    });
}

/// Runs `f` on a fresh glommio executor; a hang past `limit` fails the test instead of
/// blocking the suite.
pub fn run_on_executor<F: std::future::Future<Output = ()> + 'static>(
    limit: Duration,
    f: impl FnOnce() -> F,
) {
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(128 << 10)
        .make()
        .unwrap_or_else(|e| panic!("executor: {e}"));
    ex.run(async move {
        let finished = futures_lite::future::or(
            async {
                f().await;
                true
            },
            async {
                glommio::timer::sleep(limit).await;
                false
            },
        );
        assert!(finished.await, "test timed out");
    });
}
