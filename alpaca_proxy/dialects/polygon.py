"""Polygon's (now Massive's) websocket protocol, as pure translation.

One cluster per market (``/stocks``, ``/crypto`` ...), JSON only, every frame an
array of objects with ``ev``.  Client messages become ``PolygonAuth`` or
``PolygonChange`` requests (or a ``PolygonError``); states are acknowledged with
one ``subscribed to: EV.SYM`` status per parameter; upstream events yield their
routing keys ``(ev, symbol)``.  The router keeps these keys exactly as it keeps
Alpaca's (channel, symbol) pairs: ``ev`` is the channel, ``*`` the wildcard.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable, Mapping

from attrs import frozen

from alpaca_proxy.credentials import Credentials
from alpaca_proxy.streams import POLYGON_MARKETS
from alpaca_proxy.subscriptions import WILDCARD, Change

#: Event fields that name the instrument, in the order they are tried
#: (``p`` is the pair only on forex quotes; elsewhere it is a price).
_SYMBOL_FIELDS = ("sym", "pair", "T", "p")

#: Subscriptions may name crypto and forex pairs with the ticker prefix the REST
#: API uses (``XT.X:BTC-USD``); events carry the bare pair.
_PREFIXES = {"crypto": "X:", "forex": "C:"}

_EV = re.compile(r"[A-Z][A-Z0-9]{0,15}")
_SYM = re.compile(r"[A-Za-z0-9*][A-Za-z0-9./:_\-*]{0,63}")


def status(state: str, message: str) -> dict[str, str]:
    """A status message as Polygon sends it."""
    return {"ev": "status", "status": state, "message": message}


CONNECTED = status("connected", "Connected Successfully")
AUTH_SUCCESS = status("auth_success", "authenticated")
AUTH_FAILED = status("auth_failed", "authentication failed")
AUTH_TIMEOUT = status("auth_timeout", "No authentication request received.")
NOT_AUTHORIZED = status("error", "not authorized: authenticate first")
INVALID_MESSAGE = status("error", "invalid message")
SLOW_CONSUMER = status("slow_consumer", "Slow consumer: disconnected by alpaca-proxy")


class PolygonError(Exception):
    """A client message refused with a status message."""

    def __init__(self, reply: Mapping[str, str]) -> None:
        super().__init__(reply["message"])
        self.reply = dict(reply)


def credentials_for(api_key: str) -> Credentials:
    """A Polygon key as credentials: the key is the secret, so the public half is a
    fingerprint (what logs, the status page and /metrics show)."""
    fingerprint = hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:12]
    return Credentials("polygon-" + fingerprint, api_key)


@frozen
class PolygonAuth:
    credentials: Credentials


@frozen
class PolygonChange:
    """A (un)subscribe: the router's change, and the parameters to acknowledge."""

    change: Change
    params: tuple[str, ...]


def _param(item: str) -> tuple[str, str] | None:
    ev, dot, symbol = item.partition(".")
    if not dot or not _EV.fullmatch(ev) or not _SYM.fullmatch(symbol):
        return None
    if "*" in symbol and symbol != WILDCARD:
        return None
    return ev, symbol


def parse(message: Any) -> PolygonAuth | PolygonChange:
    """Turn one decoded client message into a request, or raise PolygonError."""
    if not isinstance(message, dict):
        raise PolygonError(INVALID_MESSAGE)
    action, params = message.get("action"), message.get("params")
    if action == "auth":
        if not isinstance(params, str) or not params.strip():
            raise PolygonError(AUTH_FAILED)
        return PolygonAuth(credentials_for(params.strip()))
    if action not in ("subscribe", "unsubscribe"):
        raise PolygonError(status("error", "unknown action: %s" % (str(action)[:40],)))
    if params is None:
        params = ""
    if not isinstance(params, str):
        raise PolygonError(status("error", "params must be a comma-separated string"))
    channels: dict[str, dict[str, None]] = {}
    accepted: dict[str, None] = {}
    for item in params.split(","):
        item = item.strip()
        if not item:
            continue
        key = _param(item)
        if key is None:
            raise PolygonError(status("error", "invalid subscription: %s" % (item[:80],)))
        channels.setdefault(key[0], {})[key[1]] = None
        accepted["%s.%s" % key] = None
    change = Change(action, {ev: tuple(symbols) for ev, symbols in channels.items()})
    return PolygonChange(change, tuple(accepted))


def acknowledgements(action: str, params: Iterable[str]) -> list[dict[str, str]]:
    """One status per parameter, as Polygon answers a (un)subscribe."""
    verb = "subscribed to" if action == "subscribe" else "unsubscribed to"
    return [status("success", "%s: %s" % (verb, param)) for param in params]


def acknowledged(message: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]] | None:
    """The action and keys an upstream ``success`` status acknowledges, if it is one."""
    text = message.get("message")
    if message.get("status") != "success" or not isinstance(text, str):
        return None
    for prefix, action in (("subscribed to:", "subscribe"), ("unsubscribed to:", "unsubscribe")):
        if text.startswith(prefix):
            keys = [_param(item.strip()) for item in text[len(prefix):].split(",")]
            return action, [key for key in keys if key is not None]
    return None


def is_auth_success(message: Mapping[str, Any]) -> bool:
    # The original protocol said "success"/"authenticated"; today's says auth_success.
    return message.get("status") == "auth_success" or (
        message.get("status") == "success" and message.get("message") == "authenticated")


class PolygonDialect:
    """The routing and upstream requests of one market's cluster."""

    def __init__(self, market: str) -> None:
        self.market = market
        self._prefix = _PREFIXES.get(market)

    def __repr__(self) -> str:
        return "<PolygonDialect %s>" % (self.market,)

    def request(self, action: str, keys: Iterable[tuple[str, str]]) -> dict[str, Any]:
        """The upstream (un)subscribe message for a set of (ev, symbol) keys."""
        return {"action": action, "params": ",".join("%s.%s" % key for key in keys)}

    #: Events are keyed by whichever symbol field they have (see ``routing``).
    types_by_symbol = None

    def routing(self, message: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...]]:
        """An event's channel (its ``ev``) and the symbols it is known by."""
        ev = message.get("ev")
        if not isinstance(ev, str) or ev == "status":
            return None, ()
        for name in _SYMBOL_FIELDS:
            symbol = message.get(name)
            if isinstance(symbol, str):
                if self._prefix is not None:
                    return ev, (symbol, self._prefix + symbol)
                return ev, (symbol,)
        return ev, ()


DIALECTS: Mapping[str, PolygonDialect] = {market: PolygonDialect(market) for market in POLYGON_MARKETS}


#: Aggregates carry their window's start and end (``s``, ``e``) instead of ``t``
#: (``s`` is a size on trades and quotes, so it moves only here).
_AGGREGATES = frozenset({"A", "AM", "XA", "XAS", "CA", "CAS", "FMA", "FA"})
#: Fields in Unix milliseconds on every other event (``r``: crypto receive time).
_TIMES = ("t", "r")


def shifted(message: dict[str, Any], nanoseconds: int) -> dict[str, Any]:
    """A copy with its times (Unix milliseconds) moved by ``nanoseconds``."""
    fields = ("s", "e") if message.get("ev") in _AGGREGATES else _TIMES
    milliseconds = nanoseconds // 1_000_000
    return {key: value + milliseconds
            if key in fields and isinstance(value, int) and not isinstance(value, bool)
            else value for key, value in message.items()}
