"""Alpaca's market-data stream protocol, as pure translation.

Client messages become ``Auth`` or ``subscriptions.Change`` requests (or a ``ProtocolError``
carrying Alpaca's error code); states become ``subscription`` acks; upstream data
messages yield their routing keys.  Nothing here knows about sockets or time.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import msgpack
from attrs import frozen

from alpaca_proxy.credentials import Credentials
from alpaca_proxy.refusal import Refused
from alpaca_proxy.streams import CRYPTO, NEWS, OPTIONS, STOCKS
from alpaca_proxy.subscriptions import WILDCARD, Change, State

#: Alpaca's error texts; Go compares code *and* text, so they must be exact.
ERRORS: Mapping[int, str] = {
    400: "invalid syntax",
    401: "not authenticated",
    402: "auth failed",
    403: "already authenticated",
    404: "auth timeout",
    405: "symbol limit exceeded",
    406: "connection limit exceeded",
    407: "slow client",
    408: "v2 not enabled",
    409: "insufficient subscription",
    410: "invalid subscribe action for this feed",
    411: "insufficient scope",
    412: "option messages are only available in MsgPack format",
    413: "star subscription is not allowed for option quotes",
    500: "internal error",
}

#: Channel -> ``T`` codes, per endpoint kind.  ``c``/``x`` ride on ``trades``.
_TYPES: Mapping[str, Mapping[str, str]] = {
    STOCKS: {
        "t": "trades", "q": "quotes", "b": "bars", "u": "updatedBars",
        "d": "dailyBars", "s": "statuses", "l": "lulds", "i": "imbalances",
        "c": "trades", "x": "trades",
    },
    CRYPTO: {
        "t": "trades", "q": "quotes", "b": "bars", "u": "updatedBars",
        "d": "dailyBars", "o": "orderbooks", "p": "pricing",
    },
    OPTIONS: {"t": "trades", "q": "quotes"},
    NEWS: {"n": "news"},
}

#: Keys of the ``subscription`` ack, in Alpaca's order.
_ACK_KEYS: Mapping[str, tuple[str, ...]] = {
    STOCKS: ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses",
             "lulds", "corrections", "cancelErrors"),
    CRYPTO: ("trades", "quotes", "orderbooks", "bars", "updatedBars", "dailyBars"),
    OPTIONS: ("trades", "quotes"),
    NEWS: ("news",),
}

#: Channels listed in an ack only when something is subscribed on them.
_OPTIONAL_ACK_KEYS: Mapping[str, tuple[str, ...]] = {
    STOCKS: ("imbalances",),
    CRYPTO: ("pricing",),
    OPTIONS: (),
    NEWS: (),
}

#: Every channel name any Alpaca endpoint knows; others are ignored as unknown.
_ALL_CHANNELS = frozenset(
    name for types in _TYPES.values() for name in types.values()
) | {"corrections", "cancelErrors"}

#: Implicit channels that mirror ``trades`` on stocks; accepted and ignored there.
_MIRRORS = ("corrections", "cancelErrors")

_SYMBOL = r"(?:\*|[A-Za-z0-9][A-Za-z0-9./:_\-]{0,63})"
#: A comma-joined list of symbols (or ``*``).
_SYMBOLS = re.compile(r"%s(?:,%s)*" % (_SYMBOL, _SYMBOL))

class ProtocolError(Refused):
    """A client message refused with one of Alpaca's error codes."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.args = (code, ERRORS[code])


@frozen
class Auth:
    """An ``auth`` request."""

    credentials: Credentials


def error(code: int, detail: str = "") -> dict[str, Any]:
    """Alpaca's error message for a code; a detail (the proxy's own faults only) follows
    Alpaca's text, which stays first so clients matching on it still do."""
    text = ERRORS[code] + (": " + detail if detail else "")
    return {"T": "error", "code": code, "msg": text}


WELCOME = {"T": "success", "msg": "connected"}
AUTHENTICATED = {"T": "success", "msg": "authenticated"}


class AlpacaDataDialect:
    """The market-data protocol of one kind of endpoint (stocks, crypto, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._types = _TYPES[kind]
        self.channels = frozenset(self._types.values())
        #: Channel by message type, for messages routed by their ``S`` alone (all
        #: but news, which names its symbols in a list): ``None`` for news.
        self.types_by_symbol = None if kind == NEWS else dict(self._types)
        self._ack_keys = _ACK_KEYS[kind]
        self._optional_ack_keys = _OPTIONAL_ACK_KEYS[kind]

    def __repr__(self) -> str:
        return "<AlpacaDataDialect %s>" % (self.kind,)

    # -- client -> proxy -----------------------------------------------------

    def parse(self, message: Any) -> Auth | Change:
        """Turn one decoded client message into a request, or raise ProtocolError."""
        if not isinstance(message, dict):
            raise ProtocolError(400)
        action = message.get("action")
        if action == "auth":
            key, secret = message.get("key"), message.get("secret")
            if not isinstance(key, str) or not isinstance(secret, str):
                raise ProtocolError(400)
            return Auth(Credentials(key, secret))
        if action in ("subscribe", "unsubscribe"):
            return Change(action, self._channels(message))
        raise ProtocolError(400)

    def _channels(self, message: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
        channels: dict[str, tuple[str, ...]] = {}
        refused = False
        for name, value in message.items():
            if name == "action" or name not in _ALL_CHANNELS:
                continue
            symbols = _symbols(value)
            if name in self.channels:
                if symbols:
                    channels[name] = symbols
            elif symbols and not (self.kind == STOCKS and name in _MIRRORS):
                refused = True
        # Syntax errors outrank a channel the feed lacks: every value was checked.
        if refused:
            raise ProtocolError(410)
        if self.kind == OPTIONS and WILDCARD in channels.get("quotes", ()):
            raise ProtocolError(413)
        return channels

    # -- proxy -> client -----------------------------------------------------

    def ack(self, state: State) -> dict[str, Any]:
        """The ``subscription`` message listing a whole state, Alpaca's key set."""
        message: dict[str, Any] = {"T": "subscription"}
        for name in self._ack_keys:
            source = "trades" if name in _MIRRORS else name
            message[name] = list(state.get(source, ()))
        for name in self._optional_ack_keys:
            if state.get(name):
                message[name] = list(state[name])
        return message

    # -- upstream ------------------------------------------------------------

    def request(self, action: str, keys: Iterable[tuple[str, str]]) -> dict[str, Any]:
        """The upstream (un)subscribe message for a set of (channel, symbol) keys."""
        message: dict[str, Any] = {"action": action}
        for channel, symbol in keys:
            message.setdefault(channel, []).append(symbol)
        return message

    def acked_keys(self, message: Mapping[str, Any]) -> set[tuple[str, str]]:
        """The (channel, symbol) keys an upstream ``subscription`` message lists."""
        keys = set()
        for channel in self.channels:
            symbols = message.get(channel)
            if isinstance(symbols, list):
                keys.update((channel, s) for s in symbols if isinstance(s, str))
        return keys

    def routing(self, message: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...]]:
        """A data message's channel and the symbols it concerns.

        News is keyed by every entry of ``symbols`` (none: only ``*`` gets it).
        Unknown types give channel ``None`` and go nowhere.
        """
        kind = message.get("T")
        channel = self._types.get(kind) if isinstance(kind, str) else None
        if channel is None:
            return None, ()
        if self.kind == NEWS:
            symbols = message.get("symbols") or ()
            return channel, tuple(s for s in symbols if isinstance(s, str))
        symbol = message.get("S")
        return channel, (symbol,) if isinstance(symbol, str) else ()


def _symbols(value: Any) -> tuple[str, ...]:
    """A channel's symbol list; ``None`` and ``[]`` mean nothing, bad ones are 400.

    Checked with one regular expression over the joined list (10,000 symbols in
    one C-level scan, not 10,000 Python calls); a symbol cannot smuggle the
    separator in, since the separators are counted.
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ProtocolError(400)
    if not value:
        return ()
    try:
        joined = ",".join(value)
    except TypeError:  # not all strings
        raise ProtocolError(400) from None
    if joined.count(",") != len(value) - 1 or not _SYMBOLS.fullmatch(joined):
        raise ProtocolError(400)
    return tuple(dict.fromkeys(value))


DIALECTS: Mapping[str, AlpacaDataDialect] = {
    kind: AlpacaDataDialect(kind) for kind in (STOCKS, CRYPTO, OPTIONS, NEWS)
}


def shifted(message: dict[str, Any], nanoseconds: int) -> dict[str, Any]:
    """A copy with every timestamp moved by ``nanoseconds`` (for ``--replay-shift``).

    Upstream speaks MessagePack, so times are timestamp extensions: ``t`` on
    market data, ``created_at``/``updated_at`` on news, ``ft`` on perps pricing.
    Key order is kept (the Go SDK wants ``T`` first).
    """
    return {key: _moved(value, nanoseconds) if isinstance(value, msgpack.Timestamp) else value
            for key, value in message.items()}


def _moved(stamp: msgpack.Timestamp, nanoseconds: int) -> msgpack.Timestamp:
    return msgpack.Timestamp.from_unix_nano(max(0, stamp.to_unix_nano() + nanoseconds))
