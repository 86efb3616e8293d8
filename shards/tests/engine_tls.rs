//! The engine's real code path: https Gamma (ureq) and wss, against
//! the simulator serving TLS with a self-signed certificate on 127.0.0.1. Issue 11: ureq's
//! default TLS config panicked on the first https request, and every other test used plain
//! http/ws, so none noticed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_rustls::pki_types::CertificateDer;
use polybook_shards::engine;
use polybook_shards::engine::discovery::{
    discover, gamma_tls_config, DiscoveryError, DiscoveryLimits,
};
use polybook_shards::net::{parse_pem_roots, USER_AGENT};
use serde_json::Value;

fn read_roots(pem: &std::path::Path) -> Vec<CertificateDer<'static>> {
    let text = std::fs::read(pem).unwrap_or_else(|e| panic!("{}: {e}", pem.display()));
    parse_pem_roots(&text).unwrap_or_else(|e| panic!("{}: {e}", pem.display()))
}

fn sim_status(base: &str) -> Value {
    get(&format!("{base}/sim/status")).1
}

/// The simulator saw at least one request of this kind, every one with our User-Agent.
fn assert_named_itself(status: &Value, kind: &str) {
    let seen = &status["user_agents"][kind];
    assert!(seen["requests"].as_u64().unwrap_or(0) >= 1, "no {kind} request: {seen}");
    assert_eq!(seen["missing"], 0, "{kind} requests without a User-Agent: {seen}");
    assert_eq!(seen["last"], USER_AGENT, "{kind}: {seen}");
}

#[test]
fn engine_over_https_and_wss_books_equal_truth() {
    let started = Instant::now();
    let (sim, pem) = tls_sim(21, 60, 300.0);
    let base = sim.http_url();
    assert!(base.starts_with("https://localhost:"), "{base}");
    assert!(sim.ws_url().starts_with("wss://localhost:"), "{}", sim.ws_url());
    // engine_config points gamma, clob and ws at the simulator's https/wss URLs.
    let cfg = with_tls_roots(engine_config(&sim, 40), Some(&pem));
    assert!(cfg.endpoints.gamma_url.starts_with("https://"));
    assert_eq!(cfg.tls_roots().len(), 1);
    let engine = engine::start(&cfg).unwrap_or_else(|e| panic!("{e}"));

    wait_for("all books live", Duration::from_secs(90), || all_books_settled(&engine, 120));
    wait_at_rest(&base);
    let compared = wait_for("books equal to truth", Duration::from_secs(30), || {
        compare_with_truth(&engine, &sim, &|_, _| false)
    });
    assert!(compared.len() >= 120, "compared {}", compared.len());

    let s = stats(&engine);
    assert_eq!(total(&s, "hash_mismatches"), 0, "{}", s["totals"]);
    assert_eq!(total(&s, "decode_errors"), 0, "{}", s["totals"]);
    assert_eq!(s["discovery"]["failures"], 0, "{}", s["discovery"]);
    let status = sim_status(&base);
    assert_named_itself(&status, "gamma");
    assert_named_itself(&status, "ws");
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&pem);
    eprintln!(
        "engine over TLS: {} books equal to truth in {:?}",
        compared.len(),
        started.elapsed()
    );
}

#[test]
fn engine_with_an_untrusted_certificate_reports_it_and_keeps_retrying() {
    let (sim, pem) = tls_sim(23, 10, 50.0);
    // The same endpoints, but no tls_roots_file: the self-signed certificate is not trusted.
    let cfg = with_tls_roots(engine_config(&sim, 40), None);
    let engine = engine::start(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let s = wait_for("two failed discovery runs", Duration::from_secs(60), || {
        let s = stats(&engine);
        if s["discovery"]["failures"].as_u64().unwrap_or(0) >= 2 {
            Ok(s)
        } else {
            Err(s["discovery"].to_string())
        }
    });
    let err = s["discovery"]["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");
    assert!(err.contains("tls_roots_file"), "the error says how to fix it: {err}");
    assert!(s["discovery"]["runs"].as_u64().unwrap_or(0) >= 2, "{}", s["discovery"]);
    // Up and answering, with nothing tracked.
    assert_eq!(get(&format!("http://{}/health", engine.api_addr())).0, 200);
    assert_eq!(s["markets_total"], 0, "{s}");
    // No request got past the handshake.
    assert_eq!(sim_status(&sim.http_url())["user_agents"]["gamma"]["requests"], 0);
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&pem);
}

fn limits(roots: &[CertificateDer<'static>]) -> DiscoveryLimits {
    DiscoveryLimits {
        page_limit: 100,
        requests_per_10s_max: 250,
        markets_max: 10_000,
        retries_max: 5,
        request_timeout: Duration::from_secs(10),
        tls: gamma_tls_config(roots),
    }
}

#[test]
fn ureq_with_our_tls_config_errs_on_untrusted_and_works_on_trusted() {
    let (sim, pem) = tls_sim(27, 8, 0.0);
    let roots = read_roots(&pem);
    let url = format!("{}/markets/keyset?closed=false&limit=5", sim.http_url());
    let agent = |roots: &[CertificateDer<'static>]| -> ureq::Agent {
        ureq::Agent::config_builder()
            .tls_config(gamma_tls_config(roots))
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into()
    };
    // Untrusted: an Err (ureq's default config panicked here instead).
    match agent(&[]).get(&url).call() {
        Ok(r) => panic!("untrusted certificate accepted: HTTP {}", r.status()),
        Err(e) => assert!(e.to_string().contains("certificate"), "{e}"),
    }
    let resp = agent(&roots).get(&url).call().unwrap_or_else(|e| panic!("trusted: {e}"));
    assert_eq!(resp.status().as_u16(), 200);

    // A whole discovery run: the TLS failure ends it at once (another try would fail the same
    // way; the next run retries), and with the root it finds every open market.
    match discover(&sim.http_url(), &[], &limits(&[])) {
        Err(DiscoveryError::Tls(why)) => assert!(why.contains("certificate"), "{why}"),
        other => panic!("want a TLS error, got {other:?}"),
    }
    let run = discover(&sim.http_url(), &[], &limits(&roots)).unwrap_or_else(|e| panic!("{e}"));
    let open = sim_tokens(&sim).iter().filter(|(_, active)| *active).count() / 2;
    assert_eq!(run.markets.len(), open);
    assert_eq!(run.retries, 0);
    assert_named_itself(&sim_status(&sim.http_url()), "gamma");
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&pem);
}
