//! Regression: a recycle whose slot disappears (its markets untracked) while the replacement
//! socket opens must not kill the data shard. The old `recycle_once` held a `shard.borrow()`
//! while calling `finish`, which borrows mutably: "RefCell already borrowed", the executor
//! thread unwound and `/health` was 503 for good (issue 11).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use polybook::book::TokenMeta;
use polybook::policy::Backoff;
use polybook::{ConnId, MarketId, StoreConfig, TokenId};
use polybook_shards::engine::data::{self, DataShardConfig};
use polybook_shards::engine::mesh::{Command, MarketSpec};
use polybook_shards::net::ConnectOptions;

fn shard_config(ws_url: String) -> DataShardConfig {
    DataShardConfig {
        shard: 0,
        ws_url,
        connect: ConnectOptions::default(),
        tokens_per_conn_target: 2,
        ids_per_frame_max: 100,
        ping_interval: Duration::from_millis(500),
        pong_timeout: Duration::from_secs(10),
        data_silence: Duration::from_secs(20),
        first_book_timeout: Duration::from_secs(5),
        backoff: Backoff { min_ms: 20, max_ms: 200 },
        dynamic_subscribe: true,
        custom_features: true,
        handoff_timeout: Duration::from_secs(5),
        store: StoreConfig::default(),
        handler: None,
        record_dir: None,
        record_options: Default::default(),
        stale_after: Duration::from_secs(15),
        nats: None,
    }
}

fn specs(sim: &polybook_shards::sim_server::SimServerHandle, n: usize) -> Vec<MarketSpec> {
    let (_, markets) = common::get(&format!("{}/sim/markets", sim.http_url()));
    markets
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["active"] == true)
        .take(n)
        .map(|m| MarketSpec {
            market: MarketId::new(m["condition_id"].as_str().unwrap()),
            tokens: m["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| TokenId::new(t.as_str().unwrap()))
                .collect(),
            meta: TokenMeta::default(),
        })
        .collect()
}

#[test]
fn recycle_of_a_slot_untracked_mid_handoff_keeps_the_shard_alive() {
    let sim = common::sim(11, 20, 200.0);
    let markets = specs(&sim, 8);
    assert_eq!(markets.len(), 8);
    let (cmd_tx, cmd_rx) = flume::bounded(64);
    let (rep_tx, _rep_rx) = flume::bounded(1024);
    let (str_tx, _str_rx) = flume::bounded(1024);
    let (stats_tx, _stats_rx) = flume::bounded(1024);
    let cfg = shard_config(sim.ws_url());
    let shard = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(128 << 10)
        .name("data-test")
        .spawn(move || data::run(cfg, cmd_rx, rep_tx, str_tx, stats_tx))
        .unwrap();
    cmd_tx.send(Command::Track(markets.clone())).unwrap();
    // One market per slot (2 tokens per connection): slot ids are 1..=8.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (tx, rx) = flume::bounded(1);
        cmd_tx.send(Command::Stats { reply: tx }).unwrap();
        let st = rx.recv_timeout(Duration::from_secs(5)).expect("shard answers");
        if st.books_live == 16 {
            break;
        }
        assert!(Instant::now() < deadline, "books never went live: {st:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Race every slot: start its recycle and take its only market away at once, so that the
    // slot is gone when the recycle looks at its progress.
    for (i, m) in markets.iter().enumerate() {
        let (tx, rx) = flume::bounded(1);
        cmd_tx
            .send(Command::Recycle { conn: ConnId::from_raw(i as u32 + 1), reply: Some(tx) })
            .unwrap();
        cmd_tx.send(Command::Untrack(vec![m.market.clone()])).unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "recycle {i} started");
    }
    // Give the recycles time to poll their (vanished) slots, then the shard must still answer.
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        let (tx, rx) = flume::bounded(1);
        cmd_tx.send(Command::Stats { reply: tx }).unwrap();
        let st = rx.recv_timeout(Duration::from_secs(5)).expect("the shard died in a recycle");
        assert_eq!(st.markets, 0);
        std::thread::sleep(Duration::from_millis(100));
    }
    cmd_tx.send(Command::Shutdown).unwrap();
    assert!(shard.join().is_ok(), "the data shard's thread panicked");
    sim.stop().unwrap();
}
