"""A small client for polybook's HTTP API and its /ws live book stream.

Standard library plus ``websockets``. Prices and sizes stay the exact decimal strings the engine
sends; ordering uses ``decimal.Decimal`` (exact), never floats.

    from polybook_client import Client
    api = Client("http://127.0.0.1:8080")
    token = api.markets(limit=1)[0]["tokens"][0]
    print(api.book(token, depth=5))
    books = asyncio.run(api.live([token]).run(seconds=10))   # {token: LiveBook}

The live rules are the README's: a ``snapshot`` replaces the book unless it is older than
it; any other message applies when its ``seq`` is newer; a jump of more than one is a gap, and
the client resubscribes that token for a fresh snapshot; ``reset`` drops the book.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from decimal import Decimal
from typing import Callable, Dict, Iterable, List, Optional

__all__ = ["Client", "LiveBook", "LiveBooks"]


class Client:
    """The engine's HTTP API at ``base`` (e.g. ``http://127.0.0.1:8080``)."""

    def __init__(self, base: str, timeout: float = 10.0):
        self.base = base.rstrip("/")
        self.timeout = timeout

    def get(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.base}{path}" + (f"?{query}" if query else "")
        with urllib.request.urlopen(url, timeout=self.timeout) as r:
            return json.loads(r.read())

    def markets(self, status: str = "active", q: Optional[str] = None, offset: int = 0,
                limit: int = 100) -> List[dict]:
        """One page of the registry (``GET /markets``)."""
        return self.get("/markets", status=status, q=q, offset=offset, limit=limit)["markets"]

    def all_markets(self, status: str = "active") -> List[dict]:
        """Every market, page by page."""
        out: List[dict] = []
        while True:
            page = self.markets(status=status, offset=len(out), limit=1000)
            out.extend(page)
            if len(page) < 1000:
                return out

    def book(self, token: str, depth: Optional[int] = None) -> dict:
        """One book (``GET /books/{token}``): bids and asks best first, as strings."""
        return self.get(f"/books/{urllib.parse.quote(token)}", depth=depth)

    def stats(self) -> dict:
        return self.get("/stats")

    def ws_url(self) -> str:
        scheme = "wss" if self.base.startswith("https") else "ws"
        return f"{scheme}://{self.base.split('://', 1)[1]}/ws"

    def live(self, tokens: Iterable[str] = (), markets: Iterable[str] = (),
             depth: Optional[int] = None) -> "LiveBooks":
        return LiveBooks(self.ws_url(), list(tokens), list(markets), depth)


class LiveBook:
    """A book kept from the stream: ``bids``/``asks`` map price string -> size string."""

    def __init__(self, token: str):
        self.token = token
        self.seq = -1
        self.status = "seeding"
        self.bids: Dict[str, str] = {}
        self.asks: Dict[str, str] = {}
        self.last_trade: Optional[dict] = None
        self.tick_size: Optional[str] = None
        self.timestamp_ms = 0

    def levels(self, side: str) -> List[List[str]]:
        """``[[price, size], ...]`` best first, like ``/books``."""
        book = self.bids if side == "bids" else self.asks
        return [[p, book[p]] for p in sorted(book, key=Decimal, reverse=(side == "bids"))]

    def best_bid(self) -> Optional[List[str]]:
        lv = self.levels("bids")
        return lv[0] if lv else None

    def best_ask(self) -> Optional[List[str]]:
        lv = self.levels("asks")
        return lv[0] if lv else None

    def __repr__(self) -> str:
        return (f"LiveBook({self.token[:10]}.., seq={self.seq}, {self.status}, "
                f"bid={self.best_bid()}, ask={self.best_ask()})")


class LiveBooks:
    """Books kept live from ``/ws``. ``books`` maps token id -> :class:`LiveBook`."""

    def __init__(self, url: str, tokens: List[str], markets: List[str] = (),
                 depth: Optional[int] = None):
        self.url = url
        self.tokens = list(tokens)
        self.markets = list(markets)
        self.depth = depth
        self.books: Dict[str, LiveBook] = {}
        self.gaps = 0
        self.messages = 0
        self.last_message = time.monotonic()
        self.unknown: List[str] = []
        self._ws = None

    def _subscribe_msg(self, tokens: List[str], markets: List[str] = ()) -> str:
        msg = {"op": "subscribe", "tokens": tokens, "markets": list(markets)}
        if self.depth is not None:
            msg["depth"] = self.depth
        return json.dumps(msg)

    async def _resubscribe(self, token: str) -> None:
        self.gaps += 1
        self.books.pop(token, None)
        await self._ws.send(json.dumps({"op": "unsubscribe", "tokens": [token]}))
        await self._ws.send(self._subscribe_msg([token]))

    async def handle(self, msg: dict) -> Optional[str]:
        """Applies one stream message; returns the token it changed, if any."""
        kind = msg.get("type")
        if kind == "subscribed":
            self.unknown.extend(msg.get("unknown", []))
            return None
        token = msg.get("token_id")
        if token is None:
            return None
        seq = msg.get("seq", 0)
        if kind == "snapshot":
            old = self.books.get(token)
            if old is not None and seq < old.seq:
                return None
            b = self.books[token] = LiveBook(token)
            book = msg["book"]
            b.seq = seq
            b.status = book.get("status", "live")
            b.bids = {p: s for p, s in book.get("bids", [])}
            b.asks = {p: s for p, s in book.get("asks", [])}
            b.last_trade = book.get("last_trade")
            b.tick_size = book.get("tick_size")
            b.timestamp_ms = book.get("timestamp_ms", 0)
            return token
        if kind == "reset":
            self.books.pop(token, None)
            return token
        b = self.books.get(token)
        if b is None or seq <= b.seq:
            return None
        if seq > b.seq + 1:
            await self._resubscribe(token)
            return None
        b.seq = seq
        b.timestamp_ms = msg.get("timestamp_ms", b.timestamp_ms)
        if kind == "level":
            side = b.bids if msg["side"] == "BUY" else b.asks
            if Decimal(msg["size"]) == 0:
                side.pop(msg["price"], None)
            else:
                side[msg["price"]] = msg["size"]
        elif kind == "trade":
            b.last_trade = {"price": msg["price"], "size": msg["size"], "side": msg["side"]}
        elif kind == "tick_size":
            b.tick_size = msg["tick_size"]
        elif kind == "status":
            b.status = msg["status"]
        return token

    async def run(self, seconds: Optional[float] = None,
                  on_update: Optional[Callable[[LiveBook], None]] = None,
                  until: Optional[Callable[["LiveBooks"], bool]] = None) -> Dict[str, LiveBook]:
        """Subscribes and keeps the books until ``seconds`` pass or ``until(self)`` is true
        (checked after each message and every 100 ms); returns ``books``."""
        import websockets  # imported here so the HTTP half needs only the standard library

        deadline = None if seconds is None else time.monotonic() + seconds
        async with websockets.connect(self.url, max_size=None) as ws:
            self._ws = ws
            await ws.send(self._subscribe_msg(self.tokens, self.markets))
            while True:
                if until is not None and until(self):
                    return self.books
                if deadline is not None and time.monotonic() >= deadline:
                    return self.books
                try:
                    text = await asyncio.wait_for(ws.recv(), timeout=0.1)
                except asyncio.TimeoutError:
                    continue
                self.messages += 1
                self.last_message = time.monotonic()
                token = await self.handle(json.loads(text))
                if token is not None and on_update is not None and token in self.books:
                    on_update(self.books[token])
