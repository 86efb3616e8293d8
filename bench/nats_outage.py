#!/usr/bin/env python3
"""NATS down for 10 s under a running engine: does the engine keep applying, how long until
it reconnects and every snapshot is republished (and stored in JetStream)?

    cargo build --release -p polybook-shards --bin polybook
    python3 bench/nats_outage.py [target/release/polybook]

Starts nats-server (ports 24222/28222, store in /tmp/polybook-outage) and `polybook demo`
(200 markets, 1000 events/s, API on 127.0.0.1:18080) with `[publish.nats]` on, kills the
server with SIGKILL for 10 s, starts it again on the same port and store, and prints what
/stats and the server's /jsz said. Numbers are in BENCHMARKS.md ("NATS publishing").
"""
import json, subprocess, sys, time, urllib.request, shutil, os, signal
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, 'target/release/polybook')
DIR = '/tmp/polybook-outage'
os.makedirs(DIR, exist_ok=True)
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e: return e.code, None
    except Exception: return 0, None
shutil.rmtree(DIR + '/store', ignore_errors=True)
def nats():
    return subprocess.Popen(['nats-server','-a','127.0.0.1','-p','24222','-m','28222','-js','-sd',DIR + '/store'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
cfg = open(os.path.join(ROOT, 'config.toml')).read().replace('# url = "nats://127.0.0.1:4222"','url = "nats://127.0.0.1:24222"')
open(DIR + '/cfg.toml','w').write(cfg)
n = nats(); time.sleep(0.5)
eng = subprocess.Popen([BIN,'demo','--config',DIR + '/cfg.toml','--markets','200','--rate','1000','--api','127.0.0.1:18080'], stdout=subprocess.DEVNULL, stderr=open(DIR + '/engine.log','w'))
api='http://127.0.0.1:18080'
for _ in range(120):
    s, st = get(api+'/stats')
    if st and st['totals'].get('books_live',0) >= 380 and st['nats'] and st['nats']['connected']: break
    time.sleep(0.5)
time.sleep(3)
s, st = get(api+'/stats'); t = st['totals']; nn = st['nats']
print('before: books_live', t['books_live'], 'frames', t['frames'], 'nats', {k: nn[k] for k in ('published','snapshots_kept','dropped')})
n.send_signal(signal.SIGKILL); n.wait(); t0 = time.time()
down_at = None
while time.time() - t0 < 10:
    s, st = get(api+'/stats'); h,_ = get(api+'/health')
    if st and not st['nats']['connected'] and down_at is None: down_at = time.time()-t0
    time.sleep(1)
print('engine saw NATS down after %.2fs' % down_at)
s, st = get(api+'/stats'); h,_ = get(api+'/health'); t = st['totals']; nn = st['nats']
print('after 10s down: health', h, 'frames', t['frames'], 'books_live', t['books_live'], 'nats', {k: nn[k] for k in ('connected','dropped_disconnected','dropped_at_shards','snapshots_kept','last_error')})
frames_down = t['frames']
kept = nn['snapshots_kept']; rep0 = nn['republished']
n = nats(); t1 = time.time(); conn_at = rep_at = js_at = None
while time.time() - t1 < 30:
    s, st = get(api+'/stats'); nn = st['nats']
    if nn['connected'] and conn_at is None: conn_at = time.time()-t1
    if nn['republished'] - rep0 >= kept and rep_at is None: rep_at = time.time()-t1
    _, jz = get('http://127.0.0.1:28222/jsz?streams=true')
    try:
        msgs = jz['account_details'][0]['stream_detail'][0]['state']['messages']
    except Exception: msgs = 0
    if msgs >= kept and js_at is None: js_at = time.time()-t1
    if conn_at and rep_at and js_at: break
    time.sleep(0.05)
print('server restarted: engine connected after %.2fs, %d snapshots republished after %.2fs, JetStream holds them after %.2fs' % (conn_at, kept, rep_at, js_at))
s, st = get(api+'/stats'); nn = st['nats']; t = st['totals']
print('final: frames', t['frames'], 'nats', {k: nn[k] for k in ('connected','reconnects','republished','published','dropped')})
eng.send_signal(signal.SIGINT); eng.wait(timeout=20); n.kill(); n.wait()
