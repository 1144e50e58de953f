"""A fake Polygon/Massive websocket server, with a seeded simulated market.

Used by ``--simulate`` (the proxy's Polygon paths then run against it) and by
the tests, which flip its switches: accepted keys (``auth_failed`` otherwise),
the connection-limit policy (a second authenticated connection per key and
market either evicts the older one, as Polygon is reported to do, or is
refused), staying silent on requests, and injecting events.

Like ``simulator.alpaca`` it shares no protocol code with the proxy: it is written
from the protocol notes, so that a misreading in the proxy shows up in tests.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny

from alpaca_proxy.timers import use_clock
from alpaca_proxy.simulator.market import TickingMarket, Watched

MARKETS = ("stocks", "options", "forex", "crypto", "indices", "futures")

MAX_CONNECTIONS = ("Maximum number of websocket connections exceeded. You have reached the"
                   " connection limit for your account.")

#: What a wildcard subscription streams, per market.
UNIVERSE = {
    "stocks": ["AAPL", "MSFT", "NVDA", "SPY"],
    "options": ["O:SPY251219C00600000"],
    "forex": ["EUR/USD", "USD/JPY"],
    "crypto": ["BTC-USD", "ETH-USD"],
    "indices": ["I:SPX", "I:NDX"],
    "futures": ["ESZ5"],
}


def _status(status: str, message: str) -> dict[str, str]:
    return {"ev": "status", "status": status, "message": message}


class FakePolygonProtocol(WebSocketServerProtocol):
    """One connection to the fake cluster."""

    def onConnect(self, request):
        self.factory.handshakes += 1
        market = request.path.split("?")[0].strip("/")
        if market not in MARKETS:
            raise ConnectionDeny(404, "not found")
        self.market = market
        self.key: str | None = None
        self.subscriptions: set[str] = set()
        self.evicted = False
        return None

    def onOpen(self):
        self.factory.connections.append(self)
        self.send([_status("connected", "Connected Successfully")])
        self.factory.changed()

    def onClose(self, wasClean, code, reason):
        self.clean, self.close_code = wasClean, code
        if self in self.factory.connections:
            self.factory.connections.remove(self)
        self.factory.changed()

    def send(self, messages: list) -> None:
        self.sendMessage(json.dumps(messages).encode(), isBinary=False)

    def onMessage(self, payload, isBinary):
        try:
            message = json.loads(payload)
        except ValueError:
            message = None
        self.factory.received.append((self.market, message))
        if isinstance(message, dict):
            self._message(message)
        self.factory.changed()

    def _message(self, message: dict) -> None:
        action, params = message.get("action"), message.get("params")
        if action == "auth":
            return self._auth(params)
        if self.key is None:
            return self.send([_status("error", "not authorized")])
        if action not in ("subscribe", "unsubscribe") or not isinstance(params, str):
            return self.send([_status("error", "invalid action")])
        if self.factory.ignore_requests:
            return None
        items = [item.strip() for item in params.split(",") if item.strip()]
        replies = []
        for item in items:
            if action == "subscribe":
                self.subscriptions.add(item)
                replies.append(_status("success", "subscribed to: " + item))
            else:
                self.subscriptions.discard(item)
                replies.append(_status("success", "unsubscribed to: " + item))
        if replies:
            self.send(replies)
        return None

    def _auth(self, key: Any) -> None:
        factory = self.factory
        if factory.keys is not None and key not in factory.keys:
            return self.send([_status("auth_failed", "authentication failed")])
        others = [c for c in factory.connections
                  if c is not self and c.key == key and c.market == self.market]
        if others and factory.policy == "refuse":
            self.send([_status("max_connections", MAX_CONNECTIONS)])
            self.policy_close()
            return None
        for older in others:
            older.evicted = True
            older.send([_status("max_connections", MAX_CONNECTIONS)])
            older.policy_close()
        self.key = key
        self.send([_status("auth_success", "authenticated")])
        return None

    def policy_close(self) -> None:
        """Close with 1008 (policy violation), as Polygon's limit is reported to."""
        self.sendCloseFrame(code=1008, reasonUtf8=b"max connections", isReply=False)

    def wants(self, event: dict) -> bool:
        symbol = next((event[f] for f in ("sym", "pair", "T", "p")
                       if isinstance(event.get(f), str)), None)
        return ("%s.*" % event["ev"]) in self.subscriptions or (
            "%s.%s" % (event["ev"], symbol)) in self.subscriptions

    def drop(self) -> None:
        self.transport.abortConnection()


class FakePolygonFactory(Watched, WebSocketServerFactory):
    """The fake server; its attributes are the switches tests flip."""

    noisy = False  # no "Starting factory" line

    protocol = FakePolygonProtocol

    def __init__(self, keys: Iterable[str] | None = None, policy: str = "evict",
                 clock: Any = None) -> None:
        super().__init__()
        self._watchers = []
        if clock is not None:
            use_clock(self, clock)
        #: Accepted API keys; None accepts any.
        self.keys = set(keys) if keys is not None else None
        #: A second connection per key and market: "evict" the older, or "refuse" it.
        self.policy = policy
        self.ignore_requests = False
        self.handshakes = 0
        self.connections: list[FakePolygonProtocol] = []
        self.received: list[tuple[str, Any]] = []

    def authenticated(self, market: str | None = None) -> list[FakePolygonProtocol]:
        return [c for c in self.connections if c.key is not None and market in (None, c.market)]

    def inject(self, events: list, market: str | None = None) -> None:
        """Send events to each authenticated connection, only those it subscribed to."""
        for connection in self.authenticated(market):
            wanted = [event for event in events if connection.wants(event)]
            if wanted:
                connection.send(wanted)


class PolygonMarket(TickingMarket):
    """Seeded random-walk events for whatever the fake's connections subscribe to."""

    def __init__(self, clock: Any, server: FakePolygonFactory, seed: int = 1,
                 rate: float = 2.0) -> None:
        super().__init__(clock, seed, rate)
        self.server = server
        self._sequence = 0

    def tick(self) -> None:
        now = int(self.clock.seconds() * 1000)
        for connection in self.server.authenticated():
            symbols: dict[str, None] = {}
            for item in connection.subscriptions:
                symbol = item.partition(".")[2]
                names = UNIVERSE.get(connection.market, []) if symbol == "*" else [symbol]
                symbols.update(dict.fromkeys(names))
            events = []
            for symbol in symbols:
                events += self._events(connection.market, symbol, now)
            batch = [event for event in events if connection.wants(event)]
            if batch:
                connection.send(batch)

    def _events(self, market: str, symbol: str, now: int) -> list[dict]:
        price = round(self._price(symbol), 4)
        self._sequence += 1
        size = self._random.choice([1, 10, 100, 200])
        if market == "crypto":
            return [{"ev": "XT", "pair": symbol, "p": price, "t": now, "s": size / 100,
                     "c": [self._random.choice([1, 2])], "i": str(self._sequence), "x": 1,
                     "r": now},
                    {"ev": "XQ", "pair": symbol, "bp": price - 0.5, "bs": 1.5,
                     "ap": price + 0.5, "as": 0.8, "t": now, "x": 1, "r": now}]
        if market == "forex":
            return [{"ev": "C", "p": symbol, "x": 48, "a": price + 0.0002, "b": price,
                     "t": now}]
        if market == "indices":
            return [{"ev": "V", "T": symbol, "val": price, "t": now}]
        return [{"ev": "T", "sym": symbol, "x": 4, "i": str(self._sequence), "z": 3,
                 "p": price, "s": size, "c": [12], "t": now, "q": self._sequence},
                {"ev": "Q", "sym": symbol, "bx": 11, "bp": round(price - 0.01, 4), "bs": 2,
                 "ax": 12, "ap": round(price + 0.01, 4), "as": 3, "c": 0, "t": now, "z": 3,
                 "q": self._sequence}]
