"""Checks the client against a running engine fed by the simulator: keep live books from /ws
while the simulator trades, pause it, wait until the stream is quiet, then every live book must
equal /books (levels, status, last trade, tick size). Exit 0 on success.

    python3 check_live.py API_URL SIM_URL TOKENS_MAX
"""

import asyncio
import json
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from polybook_client import Client  # noqa: E402

DEADLINE_S = 90


def post(url: str) -> None:
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def at_rest(sim: str) -> bool:
    with urllib.request.urlopen(f"{sim}/sim/status", timeout=10) as r:
        return json.loads(r.read()).get("at_rest") is True


def main() -> int:
    api_url, sim, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    api = Client(api_url)
    tokens = [t for m in api.all_markets() for t in m["tokens"]][:n]
    assert tokens, "no markets"
    live = api.live(tokens)
    started = time.monotonic()
    state = {"paused": False, "rest": False}

    def done(lb) -> bool:
        now = time.monotonic()
        if now - started > DEADLINE_S:
            raise SystemExit(f"deadline: {len(lb.books)} books, {lb.messages} messages")
        # Let changes flow for a while with every book seeded, then stop the venue.
        if not state["paused"]:
            if len(lb.books) == len(tokens) and lb.messages > 2 * len(tokens) and now - started > 3:
                post(f"{sim}/sim/pause")
                state["paused"] = True
            return False
        if not state["rest"]:
            state["rest"] = at_rest(sim)
            return False
        return now - lb.last_message > 1.5

    books = asyncio.run(live.run(until=done))
    changes = live.messages - len(tokens)
    mismatches = []
    for t in tokens:
        want = api.book(t)
        got = books.get(t)
        if got is None:
            mismatches.append(f"{t}: no live book")
            continue
        for key, ours in [("bids", got.levels("bids")), ("asks", got.levels("asks")),
                          ("status", got.status), ("last_trade", got.last_trade),
                          ("tick_size", got.tick_size)]:
            if want.get(key) != ours:
                mismatches.append(f"{t}: {key}: /books {want.get(key)} live {ours}")
    print(json.dumps({"tokens": len(tokens), "messages": live.messages, "changes": changes,
                      "gaps": live.gaps, "mismatches": len(mismatches)}))
    for m in mismatches[:20]:
        print(m, file=sys.stderr)
    if changes <= 0:
        print("no changes streamed: the test proved nothing", file=sys.stderr)
        return 1
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
