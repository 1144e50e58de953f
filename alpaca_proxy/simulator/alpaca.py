"""A fake Alpaca market-data server with a seeded, simulated market.

Used by ``--simulate`` (``simulator.service``, so the proxy's real upstream path
runs against it) and
by the tests, which also use its switches: valid credentials (402 otherwise),
one authenticated session per key and endpoint (406 for another), a symbol
limit on trades+quotes (405), refusing handshakes with an HTTP status, dropping
connections and injecting messages.

This module deliberately shares no protocol code with the proxy: it is written
from the protocol notes, so that a misreading in the proxy shows up in tests.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Iterable

import msgpack
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger

from alpaca_proxy.simulator.market import TickingMarket, Watched
from alpaca_proxy.timers import use_clock

_PATHS = [
    ("trading", re.compile(r"/stream/?")),
    ("stocks", re.compile(r"/v2/[a-z_]+|/v1beta1/(boats|overnight)")),
    ("crypto", re.compile(r"/v1beta3/crypto/[a-z0-9\-]+")),
    ("perps", re.compile(r"/v1beta1/crypto-perps/[a-z0-9\-]+")),
    ("news", re.compile(r"/v1beta1/news")),
    ("options", re.compile(r"/v1beta1/(indicative|opra)")),
]

_CHANNELS = {
    "stocks": ["trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds",
               "imbalances"],
    "crypto": ["trades", "quotes", "orderbooks", "bars", "updatedBars", "dailyBars"],
    "perps": ["trades", "quotes", "orderbooks", "pricing"],
    "news": ["news"],
    "options": ["trades", "quotes"],
    "trading": [],
}

_ERRORS = {
    400: "invalid syntax", 401: "not authenticated", 402: "auth failed",
    403: "already authenticated", 405: "symbol limit exceeded",
    409: "insufficient subscription", 411: "insufficient scope",
    406: "connection limit exceeded", 410: "invalid subscribe action for this feed",
}

UNIVERSE = {
    "stocks": ["AAPL", "MSFT", "NVDA", "AMD", "TSLA", "SPY", "QQQ", "AMZN", "GOOGL", "META"],
    "crypto": ["BTC/USD", "ETH/USD", "SOL/USD"],
    "perps": ["BTC-PERP", "ETH-PERP"],
    "options": ["SPY250117C00500000", "AAPL250117P00180000"],
}

_START_PRICES = {"BTC/USD": 60000.0, "ETH/USD": 3000.0, "SOL/USD": 150.0}


def _stamp(seconds: float) -> msgpack.Timestamp:
    return msgpack.Timestamp.from_unix_nano(int(round(seconds * 1e9)))


def _json_default(value: Any) -> Any:
    if isinstance(value, msgpack.Timestamp):
        moment = datetime.fromtimestamp(value.seconds, tz=timezone.utc)
        fraction = ("%09d" % value.nanoseconds).rstrip("0")
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + ("." + fraction if fraction else "") + "Z"
    raise TypeError(repr(value))


class FakeAlpacaProtocol(WebSocketServerProtocol):
    """One connection to the fake server."""

    _log = Logger()

    def onConnect(self, request):
        factory = self.factory
        factory.handshakes += 1
        factory.changed()
        if factory.refuse_handshake:
            raise ConnectionDeny(factory.refuse_handshake, "refused by test")
        path = request.path.split("?")[0]
        self.kind = next((kind for kind, rx in _PATHS if rx.fullmatch(path)), None)
        if self.kind is None:
            raise ConnectionDeny(404, "not found")
        self.path = path
        self.msgpack = "msgpack" in request.headers.get("content-type", "")
        self.key = None
        self.subscriptions = {name: [] for name in _CHANNELS[self.kind]}
        self.listening: list[str] = []
        self.headers = dict(request.headers)
        return None

    def onOpen(self):
        self.factory.connections.append(self)
        if self.kind != "trading":  # the trading stream has no welcome
            self.send([{"T": "success", "msg": "connected"}])
        self.factory.changed()

    def onClose(self, wasClean, code, reason):
        self.close_code = code
        self.clean = wasClean
        if self in self.factory.connections:
            self.factory.connections.remove(self)
        if getattr(self, "key", None) is not None and self.factory.sessions.get(
                (self.key, self.path)) is self:
            del self.factory.sessions[(self.key, self.path)]
        if self.factory.record:
            self.factory.closed.append(self)
        self.factory.changed()

    def send(self, messages: list) -> None:
        if self.msgpack:
            self.sendMessage(msgpack.packb(messages, datetime=False), isBinary=True)
        else:
            self.sendMessage(json.dumps(messages, default=_json_default).encode(), isBinary=False)

    def error(self, code: int) -> None:
        self.send([{"T": "error", "code": code, "msg": _ERRORS[code]}])

    def onMessage(self, payload, isBinary):
        self._message(payload)
        self.factory.changed()

    def _message(self, payload: bytes) -> None:
        try:
            if payload[:1] == b"{":
                message = json.loads(payload)
            else:
                message = msgpack.unpackb(payload, timestamp=0)
        except Exception:
            return self.error(400)
        if self.factory.record:
            self.factory.received.append((self.path, message))
        if not isinstance(message, dict):
            return self.error(400)
        if self.kind == "trading":
            return self._trading(message)
        action = message.get("action")
        if action == "auth":
            return self._auth(message)
        if action in ("subscribe", "unsubscribe"):
            if self.key is None:
                return self.error(401)
            if self.factory.ignore_requests:
                return None
            return self._change(action, message)
        return self.error(400)

    def _trading(self, message: dict) -> None:
        """The trading stream: single JSON objects, two auth forms, listen."""
        def reply(obj: dict) -> None:
            self.sendMessage(json.dumps(obj).encode(), isBinary=True)

        action, data = message.get("action"), message.get("data") or {}
        if action in ("auth", "authenticate"):
            key = message.get("key") if action == "auth" else data.get("key_id")
            secret = message.get("secret") if action == "auth" else data.get("secret_key")
            accounts = self.factory.accounts
            if accounts is not None and accounts.get(key) != secret:
                return reply({"stream": "authorization", "data": {
                    "status": "unauthorized", "action": "authenticate"}})
            self.key = key
            return reply({"stream": "authorization", "data": {
                "status": "authorized", "action": "authenticate"}})
        if action == "listen":
            if self.key is None:
                return reply({"stream": "authorization", "data": {
                    "status": "unauthorized", "action": "listen"}})
            self.listening = [s for s in data.get("streams", []) if s == "trade_updates"]
            return reply({"stream": "listening", "data": {"streams": self.listening}})

    def _auth(self, message: dict) -> None:
        factory = self.factory
        if self.key is not None:
            return self.error(403)
        key, secret = message.get("key"), message.get("secret")
        if factory.auth_error:
            return self.error(factory.auth_error)
        if factory.accounts is not None and factory.accounts.get(key) != secret:
            return self.error(402)
        holder = factory.sessions.get((key, self.path))
        if (holder is not None and holder is not self) or (key, self.path) in factory.stale_slots:
            return self.error(406)
        self.key = key
        factory.sessions[(key, self.path)] = self
        self.send([{"T": "success", "msg": "authenticated"}])

    def _change(self, action: str, message: dict) -> None:
        # Ordered sets (dicts), so that 10,000-symbol requests cost linear time.
        new = {name: dict.fromkeys(symbols) for name, symbols in self.subscriptions.items()}
        for name, symbols in message.items():
            if name == "action" or symbols in (None, []):
                continue
            if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
                return self.error(400)
            if name not in new:
                return self.error(410)
            if action == "subscribe":
                new[name].update(dict.fromkeys(symbols))
            else:
                for symbol in symbols:
                    new[name].pop(symbol, None)
        limit = self.factory.symbol_limit
        if limit is not None and self.kind == "stocks":
            counted = set(new["trades"]) | set(new["quotes"])
            if len(counted) > limit:
                return self.error(405)
        added = {name: [s for s in new[name] if s not in self._wanted.get(name, ())]
                 for name in new}
        self.subscriptions = {name: list(symbols) for name, symbols in new.items()}
        self._wanted = {name: set(symbols) for name, symbols in new.items()}
        ack: dict[str, Any] = {"T": "subscription"}
        for name in _CHANNELS[self.kind]:
            if name == "imbalances" and not new[name]:
                continue
            ack[name] = list(new[name])
            if name == "lulds":
                ack["corrections"] = list(new["trades"])
                ack["cancelErrors"] = list(new["trades"])
        self.send([ack])
        if self.factory.market is not None:
            self.factory.market.subscribed(self, added)

    #: channel -> the subscribed symbols as a set (for ``wants``), beside ``subscriptions``.
    _wanted: dict = {}

    def wants(self, channel: str, symbols: Iterable[str]) -> bool:
        subscribed = self._wanted.get(channel, ())
        return "*" in subscribed or any(s in subscribed for s in symbols)

    def drop(self) -> None:
        """Cut the TCP connection without a close handshake."""
        self.transport.abortConnection()


class FakeAlpacaFactory(Watched, WebSocketServerFactory):
    """The fake server; its attributes are the switches tests flip."""

    noisy = False  # no "Starting factory" line

    protocol = FakeAlpacaProtocol

    def __init__(self, accounts: dict[str, str] | None = None,
                 symbol_limit: int | None = None, market: "SimulatedMarket | None" = None,
                 record: bool = False, clock: Any = None):
        super().__init__()
        self._watchers = []
        if clock is not None:
            use_clock(self, clock)
        self.setProtocolOptions(maxMessagePayloadSize=64 << 20, maxFramePayloadSize=64 << 20)
        #: key -> secret; None accepts any credentials.
        self.accounts = accounts
        self.symbol_limit = symbol_limit
        self.market = market
        #: Keep every received message and closed connection (tests only: grows).
        self.record = record
        #: HTTP status to refuse every handshake with (e.g. 429), or 0.
        self.refuse_handshake = 0
        self.handshakes = 0
        #: An error code to answer every auth with (e.g. 409), or 0.
        self.auth_error = 0
        #: Don't answer (un)subscribe requests at all (a stalled upstream).
        self.ignore_requests = False
        #: (key, path) slots still held by a dead connection: auth there gets 406.
        self.stale_slots: set[tuple[str, str]] = set()
        self.connections: list[FakeAlpacaProtocol] = []
        self.closed: list[FakeAlpacaProtocol] = []
        self.sessions: dict[tuple[str, str], FakeAlpacaProtocol] = {}
        self.received: list[tuple[str, Any]] = []
        if market is not None:
            market.server = self

    def authenticated(self, path: str | None = None) -> list["FakeAlpacaProtocol"]:
        """Authenticated sessions (on one path)."""
        return [c for c in self.connections if c.key is not None and path in (None, c.path)]

    def inject(self, messages: list, path: str | None = None, key: str | None = None) -> None:
        """Send data messages to every authenticated data session (of one path, one key)."""
        for connection in list(self.connections):
            if (connection.key is not None and connection.kind != "trading"
                    and path in (None, connection.path) and key in (None, connection.key)):
                connection.send(messages)

    def trade_update(self, data: dict, binary: bool = True) -> None:
        """Send one ``trade_updates`` event to every trading session listening."""
        payload = json.dumps({"stream": "trade_updates", "data": data}).encode()
        for connection in list(self.connections):
            if connection.kind == "trading" and "trade_updates" in connection.listening:
                connection.sendMessage(payload, isBinary=binary)


class SimulatedMarket(TickingMarket):
    """Seeded random-walk trades and quotes, with bars built from the trades."""

    def __init__(self, clock, seed: int = 1, rate: float = 2.0):
        super().__init__(clock, seed, rate)
        self.server: FakeAlpacaFactory | None = None
        #: kind -> symbol -> running bar
        self._minute: dict[str, dict[str, dict[str, float]]] = {}
        self._day: dict[str, dict[str, dict[str, float]]] = {}
        self._current_minute: int | None = None
        self._trade_id = 0
        self._news_id = 0
        self._ticks = 0

    def _start_price(self, symbol: str) -> float:
        return _START_PRICES.get(symbol, self._random.uniform(20, 500))

    def _symbols(self, kind: str, connections: list, channels: Iterable[str]) -> list[str]:
        found: dict[str, None] = {}
        for connection in connections:
            for channel in channels:
                for symbol in connection.subscriptions.get(channel, ()):
                    if symbol == "*":
                        found.update(dict.fromkeys(UNIVERSE.get(kind, ())))
                    else:
                        found[symbol] = None
        return list(found)

    def subscribed(self, connection: FakeAlpacaProtocol, added: dict[str, list[str]]) -> None:
        """First messages after a subscription: statuses, and full order books."""
        now = _stamp(self.clock.seconds())
        messages = []
        for symbol in added.get("statuses", ()):
            messages.append({"T": "s", "S": symbol, "sc": "T", "sm": "Trading",
                             "rc": "", "rm": "", "z": "C", "t": now})
        for symbol in added.get("orderbooks", ()):
            for name in (UNIVERSE["crypto"] if symbol == "*" else [symbol]):
                mid = self._price(name)
                messages.append({"T": "o", "S": name, "t": now, "r": True,
                                 "b": [{"p": round(mid * (1 - i / 1000), 2), "s": 0.5 + i}
                                       for i in range(1, 4)],
                                 "a": [{"p": round(mid * (1 + i / 1000), 2), "s": 0.5 + i}
                                       for i in range(1, 4)]})
        if messages:
            connection.send(messages)

    def tick(self) -> None:
        """One round of market activity for every subscribed symbol."""
        if self.server is None:
            return
        self._ticks += 1
        now_seconds = self.clock.seconds()
        now = _stamp(now_seconds)
        minute = int(now_seconds // 60)
        closing = self._current_minute is not None and minute != self._current_minute
        self._current_minute = minute
        sessions = [c for c in self.server.connections if c.key is not None]
        for kind in ("stocks", "crypto", "perps", "options"):
            connections = [c for c in sessions if c.kind == kind]
            if not connections:
                continue
            events = []
            if closing:
                events += self._bars(kind, connections, minute)
            channels = ("trades", "quotes", "bars", "dailyBars", "updatedBars", "orderbooks",
                        "pricing")
            for symbol in self._symbols(kind, connections, channels):
                events += self._activity(kind, symbol, now)
            for connection in connections:
                batch = [e for e in events if connection.wants(e[0], [e[1]["S"]])]
                if batch:
                    connection.send([message for _, message in batch])
        news = [c for c in sessions if c.kind == "news"]
        if news and self._ticks % max(1, int(self.rate * 5)) == 0:
            self._story(news, now)

    def _activity(self, kind: str, symbol: str, now) -> list[tuple[str, dict]]:
        price = self._price(symbol)
        self._trade_id += 1
        size: Any = self._random.choice([1, 10, 50, 100, 200]) if kind != "crypto" else round(
            self._random.uniform(0.001, 0.5), 4)
        for book in (self._minute.setdefault(kind, {}), self._day.setdefault(kind, {})):
            bar = book.setdefault(symbol, {"o": price, "h": price, "l": price, "c": price,
                                           "v": 0, "n": 0, "pv": 0.0})
            bar["h"], bar["l"], bar["c"] = max(bar["h"], price), min(bar["l"], price), price
            bar["v"] += size
            bar["n"] += 1
            bar["pv"] += price * size
        spread = max(0.01, round(price * 0.0002, 2))
        if kind in ("crypto", "perps"):
            trade = {"T": "t", "S": symbol, "p": round(price, 2), "s": size, "t": now,
                     "i": self._trade_id, "tks": self._random.choice("BS")}
            quote = {"T": "q", "S": symbol, "bp": round(price - spread, 2), "bs": 1.2,
                     "ap": round(price + spread, 2), "as": 0.8, "t": now}
            book = {"T": "o", "S": symbol, "t": now, "b": [{"p": round(price - spread, 2),
                                                            "s": round(size, 4)}], "a": []}
            events = [("trades", trade), ("quotes", quote), ("orderbooks", book)]
            if kind == "perps":
                events.append(("pricing", {
                    "T": "p", "S": symbol, "t": now, "ft": _stamp((int(now.seconds) // 28800 + 1)
                                                                   * 28800),
                    "ip": round(price * 0.9999, 2), "mp": round(price, 2), "fr": 0.0001,
                    "oi": 1250.5}))
            return events
        if kind == "options":
            trade = {"T": "t", "S": symbol, "t": now, "p": round(price / 50, 2), "s": 1,
                     "x": "C", "c": "I"}
            quote = {"T": "q", "S": symbol, "t": now, "bx": "C", "bp": round(price / 50, 2),
                     "bs": 10, "ax": "C", "ap": round(price / 50 + 0.05, 2), "as": 10,
                     "c": "A"}
            return [("trades", trade), ("quotes", quote)]
        trade = {"T": "t", "S": symbol, "i": self._trade_id, "x": "V", "p": round(price, 2),
                 "s": size, "c": ["@"], "z": "C", "t": now}
        quote = {"T": "q", "S": symbol, "bx": "V", "bp": round(price - spread, 2), "bs": 3,
                 "ax": "V", "ap": round(price + spread, 2), "as": 2, "c": ["R"], "z": "C",
                 "t": now}
        return [("trades", trade), ("quotes", quote)]

    def _bars(self, kind: str, connections: list, minute: int) -> list[tuple[str, dict]]:
        start = _stamp((minute - 1) * 60)
        events = []
        minute_bars = self._minute.get(kind, {})
        for symbol, bar in sorted(minute_bars.items()):
            fields = {"o": round(bar["o"], 2), "h": round(bar["h"], 2), "l": round(bar["l"], 2),
                      "c": round(bar["c"], 2), "v": bar["v"], "t": start, "n": bar["n"],
                      "vw": round(bar["pv"] / bar["v"], 4) if bar["v"] else bar["c"]}
            events.append(("bars", {"T": "b", "S": symbol, **fields}))
            day = self._day[kind][symbol]
            events.append(("dailyBars", {"T": "d", "S": symbol, "o": round(day["o"], 2),
                                         "h": round(day["h"], 2), "l": round(day["l"], 2),
                                         "c": round(day["c"], 2), "v": day["v"],
                                         "t": _stamp((minute // 1440) * 86400), "n": day["n"],
                                         "vw": round(day["pv"] / day["v"], 4)}))
        minute_bars.clear()
        return events

    def _story(self, connections: list, now) -> None:
        self._news_id += 1
        symbols = self._random.sample(UNIVERSE["stocks"], 2)
        story = {"T": "n", "id": self._news_id,
                 "headline": "Simulated: %s and %s move" % tuple(symbols),
                 "summary": "Simulated story; not real news.", "author": "alpaca-proxy simulator",
                 "created_at": now, "updated_at": now, "url": "", "content": "",
                 "symbols": symbols, "source": "simulator"}
        for connection in connections:
            if connection.wants("news", symbols):
                connection.send([story])
