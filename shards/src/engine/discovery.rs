//! Gamma discovery: page through `/markets/keyset` on a blocking thread (ureq must never run
//! on an executor), within a request budget, backing off on 429 and 5xx. A failed run changes
//! nothing: the caller keeps its last good registry.
//!
//! ureq's TLS trust is always given explicitly ([`gamma_tls_config`]): its default
//! (`RootCerts::WebPki`) panics on the first https request when ureq's own webpki feature is
//! off, as it is here to keep ring the only rustls provider (issue 11).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_rustls::pki_types::CertificateDer;
use polybook::protocol::gamma::{parse_keyset_page, GammaMarket};
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

use crate::net::{ring_provider, USER_AGENT};

/// Why a discovery run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("gamma request failed: {0}")]
    Transport(String),
    /// Not retried within the run: another handshake would fail the same way.
    #[error(
        "gamma TLS failed: {0} (for a private CA or a self-signed server, add its certificate \
         to endpoints.tls_roots_file)"
    )]
    Tls(String),
    #[error("gamma answered HTTP {status} {attempts} times in a row")]
    Status { status: u16, attempts: u32 },
    #[error("gamma page unusable: {0}")]
    Page(String),
    #[error("more than {0} pages; stopping (is the cursor looping?)")]
    TooManyPages(usize),
}

/// Limits of one run.
#[derive(Debug, Clone)]
pub struct DiscoveryLimits {
    pub page_limit: usize,
    pub requests_per_10s_max: u32,
    pub markets_max: usize,
    pub retries_max: u32,
    pub request_timeout: Duration,
    /// Trust for an https Gamma; build it with [`gamma_tls_config`].
    pub tls: TlsConfig,
}

/// ureq's TLS config for Gamma: rustls with ring, trusting the webpki roots plus `extra`.
pub fn gamma_tls_config(extra: &[CertificateDer<'static>]) -> TlsConfig {
    let roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .chain(extra)
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        // Named, not left to the process default, so it holds for any embedder too.
        .unversioned_rustls_crypto_provider(ring_provider())
        .build()
}

fn agent(limits: &DiscoveryLimits) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(limits.request_timeout))
        .http_status_as_error(false)
        .user_agent(USER_AGENT)
        .tls_config(limits.tls.clone())
        .build()
        .into()
}

/// The TLS failure inside a ureq error, if that is what it is. rustls reports handshake
/// failures through `io::Error`, so those are unwrapped too.
fn tls_failure(e: &ureq::Error) -> Option<String> {
    match e {
        ureq::Error::Rustls(r) => Some(r.to_string()),
        ureq::Error::Tls(m) => Some((*m).to_owned()),
        ureq::Error::Io(io) => {
            io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()).map(|r| r.to_string())
        }
        _ => None,
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct DiscoveryRun {
    /// Tradeable markets (order book enabled, active, open, two tokens).
    pub markets: Vec<GammaMarket>,
    pub pages: usize,
    pub requests: u32,
    /// Markets skipped as unusable (bad fields) or not tradeable.
    pub rejected: usize,
    /// 429/5xx answers retried.
    pub retries: u32,
    /// True if `markets_max` cut the run short.
    pub truncated: bool,
}

/// Runs a full keyset enumeration of open markets (of each tag in `tag_ids`, or all if it is
/// empty). Blocking: call it off the executors.
pub fn discover(
    base_url: &str,
    tag_ids: &[u64],
    limits: &DiscoveryLimits,
) -> Result<DiscoveryRun, DiscoveryError> {
    let mut run = DiscoveryRun::default();
    if tag_ids.is_empty() {
        enumerate(base_url, None, limits, &mut run)?;
    }
    for &tag in tag_ids {
        enumerate(base_url, Some(tag), limits, &mut run)?;
        if run.truncated {
            break;
        }
    }
    Ok(run)
}

/// One targeted Gamma lookup (`condition_ids=`, `slug=` or `clob_token_ids=`): the open,
/// tradeable markets it finds. Blocking: call it off the executors.
pub fn lookup(
    base_url: &str,
    key: &str,
    value: &str,
    limits: &DiscoveryLimits,
) -> Result<Vec<GammaMarket>, DiscoveryError> {
    let agent = agent(limits);
    let url = format!(
        "{}/markets/keyset?closed=false&limit=10&{key}={}",
        base_url.trim_end_matches('/'),
        urlencode(value)
    );
    let mut run = DiscoveryRun::default();
    let (mut start, mut n) = (Instant::now(), 0);
    let body = fetch(&agent, &url, limits, &mut run, &mut start, &mut n)?;
    let page = parse_keyset_page(&body).map_err(|e| DiscoveryError::Page(e.to_string()))?;
    Ok(page.markets.into_iter().filter_map(Result::ok).filter(GammaMarket::is_tradeable).collect())
}

/// Which of `ids` Gamma, asked by condition id, says are closed (`closed: true`, or no
/// longer active / accepting orders): positive evidence, so an empty or broken answer closes
/// nothing. Blocking: call it off the executors.
pub fn closed_markets(
    base_url: &str,
    ids: &[polybook::MarketId],
    limits: &DiscoveryLimits,
) -> Result<Vec<polybook::MarketId>, DiscoveryError> {
    by_condition_ids(base_url, ids, true, limits, |m| m.closed || !m.active || !m.accepting_orders)
}

/// Which of `ids` Gamma, asked by condition id, still lists open and tradeable: a market a
/// listing missed (cut short without an error) is kept if so. An error closes nothing (the
/// caller keeps every candidate). Blocking: call it off the executors.
pub fn open_markets(
    base_url: &str,
    ids: &[polybook::MarketId],
    limits: &DiscoveryLimits,
) -> Result<Vec<polybook::MarketId>, DiscoveryError> {
    by_condition_ids(base_url, ids, false, limits, GammaMarket::is_tradeable)
}

/// The ids among `ids` whose market Gamma returns for `closed=…&condition_ids=…` (100 per
/// request) and `keep` accepts.
fn by_condition_ids(
    base_url: &str,
    ids: &[polybook::MarketId],
    closed: bool,
    limits: &DiscoveryLimits,
    keep: impl Fn(&GammaMarket) -> bool,
) -> Result<Vec<polybook::MarketId>, DiscoveryError> {
    let agent = agent(limits);
    let base = base_url.trim_end_matches('/');
    let mut run = DiscoveryRun::default();
    let (mut start, mut n) = (Instant::now(), 0);
    let mut found = Vec::new();
    for chunk in ids.chunks(100) {
        let mut url = format!("{base}/markets/keyset?closed={closed}&limit={}", chunk.len());
        for id in chunk {
            url.push_str("&condition_ids=");
            url.push_str(&urlencode(id.as_str()));
        }
        let body = fetch(&agent, &url, limits, &mut run, &mut start, &mut n)?;
        let page = parse_keyset_page(&body).map_err(|e| DiscoveryError::Page(e.to_string()))?;
        for m in page.markets.into_iter().flatten() {
            if chunk.contains(&m.condition_id) && keep(&m) {
                found.push(m.condition_id);
            }
        }
    }
    Ok(found)
}

fn enumerate(
    base_url: &str,
    tag: Option<u64>,
    limits: &DiscoveryLimits,
    run: &mut DiscoveryRun,
) -> Result<(), DiscoveryError> {
    let agent = agent(limits);
    let mut cursor: Option<String> = None;
    let mut window_start = Instant::now();
    let mut in_window = 0u32;
    let base = base_url.trim_end_matches('/');
    loop {
        if run.pages > 100_000 {
            return Err(DiscoveryError::TooManyPages(run.pages));
        }
        let mut url = format!("{base}/markets/keyset?closed=false&limit={}", limits.page_limit);
        if let Some(tag) = tag {
            url.push_str(&format!("&tag_id={tag}"));
        }
        if let Some(c) = &cursor {
            url.push_str("&after_cursor=");
            url.push_str(&urlencode(c));
        }
        let body = fetch(&agent, &url, limits, run, &mut window_start, &mut in_window)?;
        let page = parse_keyset_page(&body).map_err(|e| DiscoveryError::Page(e.to_string()))?;
        run.pages += 1;
        for m in page.markets {
            match m {
                Ok(m) if m.is_tradeable() => run.markets.push(m),
                _ => run.rejected += 1,
            }
        }
        if run.markets.len() >= limits.markets_max {
            run.markets.truncate(limits.markets_max);
            run.truncated = true;
            return Ok(());
        }
        match page.next_cursor {
            Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
            _ => return Ok(()),
        }
    }
}

fn fetch(
    agent: &ureq::Agent,
    url: &str,
    limits: &DiscoveryLimits,
    run: &mut DiscoveryRun,
    window_start: &mut Instant,
    in_window: &mut u32,
) -> Result<String, DiscoveryError> {
    let mut attempt = 0u32;
    loop {
        // Stay under the venue's request budget: at most N requests per 10 s window.
        if *in_window >= limits.requests_per_10s_max {
            let elapsed = window_start.elapsed();
            if elapsed < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_secs(10) - elapsed);
            }
            *window_start = Instant::now();
            *in_window = 0;
        }
        *in_window += 1;
        run.requests += 1;
        let status = match agent.get(url).call() {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                if status == 200 {
                    return resp
                        .body_mut()
                        .with_config()
                        .limit(64 << 20)
                        .read_to_string()
                        .map_err(|e| DiscoveryError::Transport(e.to_string()));
                }
                status
            }
            Err(e) => {
                if let Some(why) = tls_failure(&e) {
                    return Err(DiscoveryError::Tls(why));
                }
                if attempt >= limits.retries_max {
                    return Err(DiscoveryError::Transport(e.to_string()));
                }
                0
            }
        };
        let retryable = status == 0 || status == 429 || status >= 500;
        if !retryable || attempt >= limits.retries_max {
            return Err(DiscoveryError::Status { status, attempts: attempt + 1 });
        }
        run.retries += 1;
        // 250 ms, 500 ms, 1 s, ... capped at 8 s.
        std::thread::sleep(Duration::from_millis(250u64 << attempt.min(5)));
        attempt += 1;
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
