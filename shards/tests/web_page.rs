//! The web page in a real browser: headless Chromium (Debian's `chromium`, which `.ci/run`
//! installs) driven over the Chrome DevTools Protocol. It opens the page served by the engine,
//! picks a market, checks the ladder's best bid/ask against `/books`, sees it change when the
//! book changes, survives an engine restart, explains an unknown market, and saves a
//! screenshot (path printed).

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use polybook_shards::engine;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    dir: std::path::PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chromium() -> String {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {c}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return c.to_owned();
        }
    }
    panic!("no Chromium found: install Debian's `chromium` (.ci/run does) to run the browser test");
}

impl Browser {
    fn launch() -> Browser {
        let dir = std::env::temp_dir().join(format!("polybook-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1400,950",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", dir.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start chromium: {e}"));
        let port_file = dir.join("DevToolsActivePort");
        let port: u16 = wait_for("DevToolsActivePort", Duration::from_secs(30), || {
            std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.parse().ok()))
                .ok_or_else(|| "not yet".to_owned())
        });
        let page_ws = wait_for("a page target", Duration::from_secs(30), || {
            let (_, list) = get(&format!("http://127.0.0.1:{port}/json/list"));
            list.as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
                .ok_or_else(|| list.to_string())
        });
        let (ws, _) = tungstenite::connect(page_ws).unwrap_or_else(|e| panic!("cdp: {e}"));
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        }
        Browser { child, ws, next_id: 0, dir }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).unwrap_or_else(|e| panic!("cdp send: {e}"));
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["id"] == id {
                        return v["result"].clone();
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("cdp read ({method}): {e}"),
            }
        }
    }

    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true}));
        r["result"]["value"].clone()
    }

    fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }
}

/// Best bid and ask the page shows for a token.
fn page_top(b: &mut Browser, token: &str) -> (String, String) {
    let q = |class: &str| {
        format!(
            "(document.querySelector('.token-panel[data-token=\"{token}\"] .{class}')||{{}}).textContent||''"
        )
    };
    let bid = b.eval(&q("best-bid")).as_str().unwrap_or_default().to_owned();
    let ask = b.eval(&q("best-ask")).as_str().unwrap_or_default().to_owned();
    (bid, ask)
}

fn engine_top(api: &str, token: &str) -> (String, String) {
    let (_, book) = get(&format!("http://{api}/books/{token}?depth=1"));
    let side = |k: &str| book[k][0][0].as_str().unwrap_or("–").to_owned();
    (side("bids"), side("asks"))
}

#[test]
fn web_page_shows_live_books_in_a_real_browser() {
    let sim = sim(71, 30, 300.0);
    let cfg = engine_config(&sim, 40);
    let eng = engine::start(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let api = eng.api_addr().to_string();
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&eng, 60));
    let (_, list) = get(&format!("http://{api}/markets?status=active&limit=50"));
    // A market with both sides on both tokens, so best bid and ask exist.
    let market = list["markets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| {
            m["tokens"].as_array().into_iter().flatten().all(|t| {
                let (b, a) = engine_top(&api, t.as_str().unwrap_or_default());
                b != "–" && a != "–"
            })
        })
        .cloned()
        .unwrap_or_else(|| panic!("no two-sided market: {list}"));
    let cid = market["condition_id"].as_str().unwrap_or_default().to_owned();
    let token = market["tokens"][0].as_str().unwrap_or_default().to_owned();

    let mut b = Browser::launch();
    b.goto(&format!("http://{api}/#market={cid}"));
    wait_for("the page connected", Duration::from_secs(30), || {
        let s = b.eval("document.getElementById('conn-state').textContent");
        if s == "live" {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    // At rest the ladder shows exactly the engine's best bid and ask.
    wait_at_rest(&sim.http_url());
    let at_rest = wait_for("ladder equals /books", Duration::from_secs(30), || {
        let (p, e) = (page_top(&mut b, &token), engine_top(&api, &token));
        if p == e && p.0 != "–" {
            Ok(p)
        } else {
            Err(format!("page {p:?} engine {e:?}"))
        }
    });
    let ladder = |b: &mut Browser| {
        b.eval(&format!(
            "document.querySelector('.token-panel[data-token=\"{token}\"] table.ladder').innerText"
        ))
        .to_string()
    };
    let before = ladder(&mut b);
    // The book changes: the page follows without reloading.
    assert_eq!(post(&format!("{}/sim/resume", sim.http_url()), ""), 200);
    wait_for("the ladder to change", Duration::from_secs(30), || {
        let now = ladder(&mut b);
        if now != before {
            Ok(())
        } else {
            Err("unchanged".into())
        }
    });
    wait_at_rest(&sim.http_url());
    wait_for("ladder equals /books again", Duration::from_secs(30), || {
        let (p, e) = (page_top(&mut b, &token), engine_top(&api, &token));
        if p == e {
            Ok(())
        } else {
            Err(format!("page {p:?} engine {e:?} (was {at_rest:?})"))
        }
    });
    let overview = b.eval("document.getElementById('ov-books').textContent");
    assert_ne!(overview, "–", "overview panel filled from /stats");

    // A screenshot for people: printed path.
    let shot = b.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("screenshot: {e}"));
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-page.png");
    std::fs::write(&path, &png).unwrap_or_else(|e| panic!("{e}"));
    println!("screenshot: {}", path.display());
    eprintln!("screenshot: {}", path.display());
    assert!(png.len() > 10_000);

    // The engine restarts on the same port: the page says so, then reconnects by itself.
    eng.stop();
    wait_for("the page to notice", Duration::from_secs(30), || {
        let s = b.eval("document.getElementById('conn-state').textContent");
        if s == "reconnecting" {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    let mut again = (*cfg).clone();
    again.api.listen = api.clone();
    let eng2 = engine::start(&again.validate().unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    wait_for("the page to reconnect", Duration::from_secs(60), || {
        let s = b.eval("document.getElementById('conn-state').textContent");
        if s == "live" {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    eprintln!("reconnected {} ms after the restart", started.elapsed().as_millis());

    // An unknown market gets a clear message.
    b.goto(&format!("http://{api}/#market=0xnope"));
    wait_for("the unknown-market message", Duration::from_secs(30), || {
        let t = b.eval(
            "(function(){const e=document.getElementById('market-error');\
             return e && !e.hidden ? e.textContent : ''})()",
        );
        let t = t.as_str().unwrap_or_default().to_owned();
        if t.contains("Unknown market") {
            Ok(())
        } else {
            Err(t)
        }
    });
    drop(b);
    eng2.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}
