#!/usr/bin/env python3
"""Keeps polybook's books from NATS alone and prints the top of each book.

The protocol (see README "Books over NATS"):
  * `{prefix}.snapshot.{token}` holds the full book with its `seq`; the JetStream stream
    `{PREFIX}_SNAPSHOTS` keeps the last one per token, so a late joiner reads them first.
  * `{prefix}.delta.{token}` carries every change (`level`, `trade`, `tick_size`, `status`,
    `snapshot`, `reset`) with the token's `seq`, one more than the previous message.
  * Apply a delta only if its `seq` is exactly one more than the book's; a jump means a message
    was lost: ignore deltas until the next snapshot (they come at least every
    `snapshot_interval_ms` while the book changes, and at once after a loss).

    pip install nats-py
    python3 examples/nats_consumer.py --url nats://127.0.0.1:4222 [--prefix polybook]
        [--seconds 30 | --until-eof] [--quiet]

It subscribes to the live subjects first, then reads the stored snapshots, so nothing falls
between the two. `--seconds` stops it after that long, `--until-eof` when its standard input
closes; then it prints a summary (books, gaps, deltas applied) and every book's top, which the
test `python_example_keeps_the_books` reads.
"""

import argparse
import asyncio
import json
import sys
from decimal import Decimal

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy


class Book:
    __slots__ = ("seq", "gapped", "bids", "asks", "status", "tick_size")

    def __init__(self):
        self.seq = 0
        self.gapped = False
        self.bids = {}
        self.asks = {}
        self.status = None
        self.tick_size = None

    def top(self):
        bid = max(self.bids, key=Decimal, default=None)
        ask = min(self.asks, key=Decimal, default=None)
        return bid, ask


class Books:
    def __init__(self):
        self.books = {}
        self.gaps = 0
        self.deltas = 0
        self.snapshots = 0

    def snapshot(self, msg):
        token = msg.get("token_id")
        if token is None:
            return None
        if msg.get("type") == "reset":
            self.books.pop(token, None)
            return None
        if msg.get("type") != "snapshot":
            return None
        seq = msg.get("seq", 0)
        b = self.books.setdefault(token, Book())
        if seq < b.seq or (seq == b.seq and b.status is not None and not b.gapped):
            return None
        book = msg["book"]
        b.bids = {p: s for p, s in book.get("bids", [])}
        b.asks = {p: s for p, s in book.get("asks", [])}
        b.status = book.get("status")
        b.tick_size = book.get("tick_size")
        b.seq = seq
        b.gapped = False
        self.snapshots += 1
        return token

    def delta(self, msg):
        kind = msg.get("type")
        if kind in ("snapshot", "reset"):
            return self.snapshot(msg)
        token = msg.get("token_id")
        b = self.books.get(token)
        seq = msg.get("seq", 0)
        if b is None or b.status is None or seq <= b.seq:
            return None
        if seq != b.seq + 1:
            if not b.gapped:
                self.gaps += 1
            b.gapped = True
        if b.gapped:
            return None
        b.seq = seq
        self.deltas += 1
        if kind == "level":
            side = b.bids if msg["side"] == "BUY" else b.asks
            if Decimal(msg["size"]) == 0:
                side.pop(msg["price"], None)
            else:
                side[msg["price"]] = msg["size"]
        elif kind == "tick_size":
            b.tick_size = msg["tick_size"]
        elif kind == "status":
            b.status = msg["status"]
        return token


def stream_name(prefix):
    base = "".join(c.upper() if c.isalnum() or c == "-" else "_" for c in prefix)
    return base + "_SNAPSHOTS"


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="nats://127.0.0.1:4222")
    ap.add_argument("--prefix", default="polybook")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: never)")
    ap.add_argument("--until-eof", action="store_true", help="stop when stdin closes")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    args = ap.parse_args()

    books = Books()

    def show(token):
        if token is None or args.quiet:
            return
        b = books.books.get(token)
        if b is None:
            return
        bid, ask = b.top()
        print(f"{token[:16]:16} seq {b.seq:>7} {b.status or '?':9} bid {bid} ask {ask}", flush=True)

    async def on_delta(m):
        show(books.delta(json.loads(m.data)))

    async def on_snapshot(m):
        show(books.snapshot(json.loads(m.data)))

    nc = await nats.connect(args.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    await nc.subscribe(f"{args.prefix}.delta.>", cb=on_delta)
    await nc.subscribe(f"{args.prefix}.snapshot.>", cb=on_snapshot)
    await nc.flush()

    js = nc.jetstream()
    try:
        sub = await js.pull_subscribe(
            f"{args.prefix}.snapshot.>",
            durable=None,
            stream=stream_name(args.prefix),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
        )
        # Snapshots keep arriving while this reads: take what was stored when the consumer
        # was made (one per token); the live subscription has everything after.
        left = (await sub.consumer_info()).num_pending
        while left > 0:
            try:
                msgs = await sub.fetch(min(left, 500), timeout=2)
            except nats.errors.TimeoutError:
                break
            for m in msgs:
                show(books.snapshot(json.loads(m.data)))
                await m.ack()
            left -= len(msgs)
        await sub.unsubscribe()
    except nats.js.errors.NotFoundError:
        print("no snapshot stream yet: books start with the next snapshots", flush=True)

    print("ready", flush=True)
    if args.until_eof:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    elif args.seconds > 0:
        await asyncio.sleep(args.seconds)
    else:
        await asyncio.Event().wait()
    await nc.drain()
    live = sum(1 for b in books.books.values() if not b.gapped and b.status is not None)
    print(
        f"summary books={len(books.books)} consistent={live} gaps={books.gaps} "
        f"deltas={books.deltas} snapshots={books.snapshots}",
        flush=True,
    )
    for token, b in sorted(books.books.items()):
        bid, ask = b.top()
        print(f"book {token} seq={b.seq} status={b.status} bid={bid} ask={ask}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
