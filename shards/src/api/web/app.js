// polybook's page: market list, two-sided ladders and depth charts that update live from /ws.
"use strict";
const $ = (sel, el = document) => el.querySelector(sel);
const DEPTH = 12;
const state = { ws: null, wsDelay: 500, market: null, books: new Map(), dirty: false, lastFrames: null };

// ---------- live stream ----------
function setConn(s) { const el = $("#conn-state"); el.textContent = s; el.className = "pill " + s; }

function connect() {
  setConn(state.ws ? "reconnecting" : "connecting");
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  state.ws = ws;
  ws.onopen = () => { state.wsDelay = 500; setConn("live"); resubscribe(); };
  ws.onmessage = (ev) => { try { onMessage(JSON.parse(ev.data)); } catch (e) { console.error(e); } };
  ws.onclose = () => {
    setConn("reconnecting");
    setTimeout(connect, state.wsDelay);
    state.wsDelay = Math.min(state.wsDelay * 2, 5000);
  };
}

function resubscribe() {
  if (!state.market || !state.ws || state.ws.readyState !== 1) return;
  for (const b of state.books.values()) { b.snap = false; }
  state.ws.send(JSON.stringify({ op: "subscribe", markets: [state.market.condition_id] }));
}

function onMessage(m) {
  const b = m.token_id && state.books.get(m.token_id);
  if (!b) return;
  if (m.type === "snapshot") {
    const book = m.book;
    b.bids = new Map(book.bids.map(([p, s]) => [p, s]));
    b.asks = new Map(book.asks.map(([p, s]) => [p, s]));
    b.status = book.status; b.tick = book.tick_size; b.last = book.last_trade; b.seq = m.seq; b.snap = true;
  } else if (m.type === "reset") {
    // The engine dropped this book (its market left the registry): show it empty and gone.
    b.bids = new Map(); b.asks = new Map(); b.status = "untracked"; b.seq = m.seq; b.snap = false;
  } else if (b.snap && m.seq > b.seq) {
    if (m.seq !== b.seq + 1) {
      // A sequence gap: our book may be wrong. Ask for a fresh snapshot instead of guessing.
      b.snap = false; b.status = "resyncing";
      resubscribe();
      schedule();
      return;
    }
    b.seq = m.seq;
    if (m.type === "level") {
      const side = m.side === "BUY" ? b.bids : b.asks;
      if (m.size === "0") side.delete(m.price); else side.set(m.price, m.size);
    } else if (m.type === "trade") { b.last = { price: m.price, size: m.size, side: m.side }; }
    else if (m.type === "tick_size") { b.tick = m.tick_size; }
    else if (m.type === "status") { b.status = m.status; }
  }
  schedule();
}

// ---------- rendering ----------
function schedule() { if (!state.dirty) { state.dirty = true; requestAnimationFrame(render); } }

const num = (s) => parseFloat(s); // display only: the strings shown are the engine's exact decimals
function sorted(map, desc) {
  return [...map.entries()].sort((a, b) => desc ? num(b[0]) - num(a[0]) : num(a[0]) - num(b[0]));
}
function fmt(x) { return (Math.round(x * 1e6) / 1e6).toString(); }

function render() {
  state.dirty = false;
  for (const b of state.books.values()) renderBook(b);
}

function renderBook(b) {
  const el = b.el;
  const bids = sorted(b.bids, true), asks = sorted(b.asks, false);
  const bb = bids[0], ba = asks[0];
  const st = $(".status", el); st.textContent = b.status || "seeding"; st.className = "pill status " + (b.status || "seeding");
  $(".best-bid", el).textContent = bb ? bb[0] : "–";
  $(".best-ask", el).textContent = ba ? ba[0] : "–";
  $(".spread", el).textContent = bb && ba ? fmt(num(ba[0]) - num(bb[0])) : "–";
  $(".mid", el).textContent = bb && ba ? fmt((num(ba[0]) + num(bb[0])) / 2) : "–";
  $(".last", el).textContent = b.last ? `${b.last.price} × ${b.last.size} ${b.last.side}` : "–";
  $(".tick", el).textContent = b.tick || "–";
  const topA = asks.slice(0, DEPTH), topB = bids.slice(0, DEPTH);
  const max = Math.max(1, ...topA.map((l) => num(l[1])), ...topB.map((l) => num(l[1])));
  const row = (l) => `<tr><td>${l[0]}</td><td>${l[1]}</td><td class="bar"><span style="width:${(100 * num(l[1]) / max).toFixed(1)}%"></span></td></tr>`;
  $("tbody.asks", el).innerHTML = topA.slice().reverse().map(row).join("");
  $("tbody.bids", el).innerHTML = topB.map(row).join("");
  drawDepth($("canvas", el), bids, asks);
}

function drawDepth(cv, bids, asks) {
  const ctx = cv.getContext("2d"), w = cv.width, h = cv.height;
  ctx.clearRect(0, 0, w, h);
  if (!bids.length && !asks.length) return;
  const cum = (ls) => { let t = 0; return ls.map(([p, s]) => [num(p), (t += num(s))]); };
  const cb = cum(bids), ca = cum(asks);
  const lo = Math.min(...cb.map((x) => x[0]), ...ca.map((x) => x[0]));
  const hi = Math.max(...cb.map((x) => x[0]), ...ca.map((x) => x[0]));
  const top = Math.max(...cb.map((x) => x[1]), ...ca.map((x) => x[1]), 1);
  const X = (p) => hi > lo ? ((p - lo) / (hi - lo)) * (w - 8) + 4 : w / 2;
  const Y = (v) => h - 4 - (v / top) * (h - 10);
  const area = (pts, fill, stroke) => {
    if (!pts.length) return;
    ctx.beginPath(); ctx.moveTo(X(pts[0][0]), h);
    for (const [p, v] of pts) { ctx.lineTo(X(p), Y(v)); }
    ctx.lineTo(X(pts[pts.length - 1][0]), h); ctx.closePath();
    ctx.fillStyle = fill; ctx.fill(); ctx.strokeStyle = stroke; ctx.stroke();
  };
  area(cb, "rgba(46,204,113,.25)", "#2ecc71");
  area(ca, "rgba(255,107,107,.25)", "#ff6b6b");
}

// ---------- markets ----------
async function getJSON(url) { const r = await fetch(url); if (!r.ok) throw new Error(`${r.status}`); return r.json(); }

let searchTimer = null;
async function loadMarkets() {
  const q = $("#search").value.trim(), st = $("#status-filter").value;
  const params = new URLSearchParams({ limit: "200" });
  if (q) params.set("q", q); if (st) params.set("status", st);
  try {
    const data = await getJSON(`/markets?${params}`);
    $("#market-count").textContent = `${data.total} markets`;
    $("#markets").innerHTML = data.markets.map((m) =>
      `<li data-id="${m.condition_id}" class="${state.market && state.market.condition_id === m.condition_id ? "selected" : ""}">` +
      `<span class="q">${escapeHtml(m.question || m.slug || m.condition_id)}</span>` +
      `<span class="s">${m.state} · ${escapeHtml(m.slug)}</span></li>`).join("");
  } catch (e) { $("#market-count").textContent = "markets unavailable"; }
}
function escapeHtml(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }

async function selectMarket(id) {
  const err = $("#market-error");
  err.hidden = true;
  if (state.market && state.ws && state.ws.readyState === 1) {
    state.ws.send(JSON.stringify({ op: "unsubscribe", markets: [state.market.condition_id] }));
  }
  let m;
  try { m = await getJSON(`/markets/${encodeURIComponent(id)}`); }
  catch (e) {
    state.market = null; state.books.clear();
    $("#market").hidden = true; $("#placeholder").hidden = true;
    err.textContent = `Unknown market: ${id}`; err.hidden = false;
    return;
  }
  state.market = m;
  location.hash = `market=${m.condition_id}`;
  $("#placeholder").hidden = true; $("#market").hidden = false;
  $("#m-question").textContent = m.question || m.slug;
  $("#m-id").textContent = m.condition_id; $("#m-state").textContent = m.state; $("#m-shard").textContent = m.shard;
  const holder = $("#tokens"); holder.innerHTML = ""; state.books.clear();
  m.tokens.forEach((t, i) => {
    const el = $("#token-template").content.firstElementChild.cloneNode(true);
    el.dataset.token = t;
    $(".outcome", el).textContent = (m.outcomes && m.outcomes[i]) || `token ${i + 1}`;
    $(".token-id", el).textContent = t;
    holder.appendChild(el);
    state.books.set(t, { el, bids: new Map(), asks: new Map(), seq: 0, snap: false, status: "seeding" });
  });
  for (const li of document.querySelectorAll("#markets li")) li.classList.toggle("selected", li.dataset.id === m.condition_id);
  resubscribe();
}

// ---------- overview ----------
async function overview() {
  try {
    const s = await getJSON("/stats");
    const t = s.totals || {};
    $("#ov-shards").textContent = (s.shards || []).length;
    $("#ov-conns").textContent = t.connections ?? 0;
    $("#ov-live").textContent = t.books_live ?? 0;
    $("#ov-books").textContent = t.books ?? 0;
    $("#ov-suspect").textContent = t.books_suspect ?? 0;
    $("#ov-resync").textContent = t.books_resyncing ?? 0;
    const now = performance.now();
    if (state.lastFrames) {
      const dt = (now - state.lastFrames.at) / 1000;
      $("#ov-fps").textContent = Math.max(0, Math.round(((t.frames ?? 0) - state.lastFrames.n) / dt));
    }
    state.lastFrames = { n: t.frames ?? 0, at: now };
  } catch (e) { /* the engine is restarting: the connection pill says so */ }
}

// ---------- wiring ----------
$("#search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(loadMarkets, 200); });
$("#status-filter").addEventListener("change", loadMarkets);
$("#markets").addEventListener("click", (e) => { const li = e.target.closest("li"); if (li) selectMarket(li.dataset.id); });
window.addEventListener("hashchange", () => {
  const id = new URLSearchParams(location.hash.slice(1)).get("market");
  if (id && (!state.market || state.market.condition_id !== id)) selectMarket(id);
});
connect();
loadMarkets();
overview(); setInterval(overview, 2000);
const initial = new URLSearchParams(location.hash.slice(1)).get("market");
if (initial) selectMarket(initial);
