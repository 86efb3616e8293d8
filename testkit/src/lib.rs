//! What polybook's end-to-end tests (`shards/tests/common`) and its load harness
//! (`bench/src/e2e`) both need, written once: polling with a deadline, an engine config pointed
//! at a simulator, reading the simulator's truth, and judging one engine book against it.
//!
//! Everything here works on answers already fetched (`serde_json::Value`), so the tests'
//! panicking HTTP helpers and the harness's `Result` ones share the judgement, not the I/O.

pub mod book_json;
pub mod truth;
pub mod wait;

pub use truth::{books_settled, compare_book, sim_tokens, BookMismatch, Compared, SimToken};
pub use wait::{poll_until, TimedOut};

use polybook_shards::config::Config;

/// A default config aimed at a simulator on `http_url`/`ws_url`, with its API on a free
/// loopback port and no progress log; callers add their own settings.
pub fn config_for_sim(http_url: &str, ws_url: &str) -> Config {
    let mut c = Config::default();
    c.endpoints.gamma_url = http_url.to_owned();
    c.endpoints.ws_url = ws_url.to_owned();
    c.api.listen = "127.0.0.1:0".into();
    c.log.progress_interval_ms = 0;
    c
}
