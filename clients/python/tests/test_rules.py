"""The stream rules of LiveBooks.handle without a server: snapshots, seq order, gaps, resets."""

import asyncio
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from polybook_client import LiveBooks  # noqa: E402


class FakeWs:
    def __init__(self):
        self.sent = []

    async def send(self, text):
        self.sent.append(json.loads(text))


def snapshot(seq, bids, asks, status="live"):
    return {"type": "snapshot", "token_id": "t", "seq": seq,
            "book": {"status": status, "bids": bids, "asks": asks, "tick_size": "0.01"}}


def level(seq, side, price, size):
    return {"type": "level", "token_id": "t", "seq": seq, "timestamp_ms": 1,
            "side": side, "price": price, "size": size}


class Rules(unittest.TestCase):
    def setUp(self):
        self.lb = LiveBooks("ws://unused", ["t"])
        self.lb._ws = FakeWs()

    def run_all(self, *msgs):
        for m in msgs:
            asyncio.run(self.lb.handle(m))

    def test_levels_apply_in_seq_order_and_zero_removes(self):
        self.run_all(snapshot(3, [["0.5", "10"]], [["0.6", "5"]]),
                     level(4, "BUY", "0.55", "2"), level(5, "SELL", "0.6", "0"),
                     level(5, "SELL", "0.7", "9"))  # a repeat of seq 5: ignored
        b = self.lb.books["t"]
        self.assertEqual(b.levels("bids"), [["0.55", "2"], ["0.5", "10"]])
        self.assertEqual(b.levels("asks"), [])
        self.assertEqual(b.seq, 5)

    def test_prices_sort_exactly_not_as_text(self):
        self.run_all(snapshot(0, [["0.9", "1"], ["0.10", "1"], ["0.095", "1"]], []))
        self.assertEqual([p for p, _ in self.lb.books["t"].levels("bids")],
                         ["0.9", "0.10", "0.095"])

    def test_a_gap_resubscribes_and_drops_the_book(self):
        self.run_all(snapshot(1, [["0.5", "1"]], []), level(3, "BUY", "0.4", "1"))
        self.assertNotIn("t", self.lb.books)
        self.assertEqual(self.lb.gaps, 1)
        ops = [(m["op"], m["tokens"]) for m in self.lb._ws.sent]
        self.assertEqual(ops, [("unsubscribe", ["t"]), ("subscribe", ["t"])])

    def test_an_older_snapshot_is_ignored_a_newer_one_replaces(self):
        self.run_all(snapshot(5, [["0.5", "1"]], []), snapshot(4, [["0.1", "1"]], []))
        self.assertEqual(self.lb.books["t"].levels("bids"), [["0.5", "1"]])
        self.run_all(snapshot(5, [["0.2", "1"]], [], status="resyncing"))
        self.assertEqual(self.lb.books["t"].levels("bids"), [["0.2", "1"]])
        self.assertEqual(self.lb.books["t"].status, "resyncing")

    def test_status_trade_and_reset(self):
        self.run_all(snapshot(0, [], []),
                     {"type": "status", "token_id": "t", "seq": 1, "status": "stale"},
                     {"type": "trade", "token_id": "t", "seq": 2, "price": "0.5",
                      "size": "3", "side": "SELL"})
        b = self.lb.books["t"]
        self.assertEqual((b.status, b.last_trade["side"]), ("stale", "SELL"))
        self.run_all({"type": "reset", "token_id": "t", "seq": 3, "reason": "untracked"})
        self.assertNotIn("t", self.lb.books)


if __name__ == "__main__":
    unittest.main()
