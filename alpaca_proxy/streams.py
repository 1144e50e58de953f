"""The path table: which upstream stream a local websocket path stands for.

Clients only change the host part of their stream URL, so the proxy accepts the
paths each SDK builds and maps them to the upstream path they would have
dialled: Alpaca's market-data paths, the trading stream (``/stream``) and
Polygon's ``/{market}`` clusters.
"""

from __future__ import annotations

import re

from attrs import frozen

STOCKS = "stocks"
CRYPTO = "crypto"
NEWS = "news"
OPTIONS = "options"
#: Alpaca's trading stream (account-wide order updates).
TRADING = "trading"
#: Polygon/Massive clusters, one per market, on ``/{market}``.
POLYGON = "polygon"
#: Markets served on ``/{market}`` (the Polygon/Massive clients' ``Market`` enum).
POLYGON_MARKETS = frozenset({
    "stocks", "options", "forex", "crypto", "indices",
    "futures", "futures/cme", "futures/cbot", "futures/nymex", "futures/comex",
})

#: Go SDK bare feed paths (``stream.WithBaseURL`` with a bare proxy base).
_BARE_STOCK_FEEDS = {"iex", "sip", "delayed_sip", "boats", "overnight", "test", "otc"}
_BARE_CRYPTO_LOCATIONS = {"us", "us-1", "us-2", "eu-1", "bs-1"}
_OPTION_FEEDS = {"indicative", "opra"}

_NAME = r"[A-Za-z0-9_\-]+"
_RULES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(rf"/v2/({_NAME})"), STOCKS, "/v2/{0}"),
    (re.compile(r"/v1beta1/(boats|overnight)"), STOCKS, "/v1beta1/{0}"),
    (re.compile(rf"/v1beta3/crypto/({_NAME})"), CRYPTO, "/v1beta3/crypto/{0}"),
    # Crypto perpetual futures: crypto's channels plus ``pricing`` (T "p").
    (re.compile(rf"/v1beta1/crypto-perps/({_NAME})"), CRYPTO, "/v1beta1/crypto-perps/{0}"),
    # alpaca-trade-api 3.2 still dials v1beta2, which Alpaca answers with HTTP 404;
    # the message shapes are the same, so it is served from v1beta3's "us" feed.
    (re.compile(r"/v1beta2/crypto"), CRYPTO, "/v1beta3/crypto/us"),
    (re.compile(r"/v1beta1/news"), NEWS, "/v1beta1/news"),
    (re.compile(r"/v1beta1/(indicative|opra)"), OPTIONS, "/v1beta1/{0}"),
]


@frozen
class Stream:
    """An upstream stream: its kind and its path on the provider's host."""

    kind: str
    path: str

    @property
    def feed(self) -> str:
        """The last path segment (``iex``, ``us``, ``opra``, ``news``)."""
        return self.path.rsplit("/", 1)[-1]


def normalize(raw_path: str) -> str:
    """Drop the query string, collapse doubled slashes and any trailing slash."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    path = re.sub(r"/{2,}", "/", path)
    if len(path) > 1:
        path = path.rstrip("/")
    return path or "/"


def resolve(raw_path: str, default_feed: str) -> Stream | None:
    """The Alpaca market-data stream a local request path asks for, or ``None``."""
    path = normalize(raw_path)
    if path == "/":
        return Stream(STOCKS, "/v2/" + default_feed)
    for pattern, kind, template in _RULES:
        match = pattern.fullmatch(path)
        if match:
            return Stream(kind, template.format(*match.groups()))
    bare = path[1:]
    if bare in _BARE_STOCK_FEEDS:
        return Stream(STOCKS, "/v2/" + bare)
    if bare in _BARE_CRYPTO_LOCATIONS:
        return Stream(CRYPTO, "/v1beta3/crypto/" + bare)
    if bare in _OPTION_FEEDS:
        return Stream(OPTIONS, "/v1beta1/" + bare)
    return None


def resolve_polygon(raw_path: str, root_market: str | None = None) -> Stream | None:
    """The Polygon cluster a local path asks for (``/stocks``, ``/futures/cme`` ...).

    ``/`` stands for ``root_market`` when the proxy serves Polygon there.
    """
    path = normalize(raw_path)
    if path == "/" and root_market:
        return Stream(POLYGON, "/" + root_market)
    if path[1:] in POLYGON_MARKETS:
        return Stream(POLYGON, path)
    return None


#: The trading stream's one upstream path.
TRADING_STREAM = Stream(TRADING, "/stream")
#: Local paths of the trading stream (alpaca-trade-api dials ``/stream/``).
_TRADING_PATHS = frozenset({"/stream"})


def resolve_trading(raw_path: str) -> Stream | None:
    """The trading stream, if a local path asks for it."""
    return TRADING_STREAM if normalize(raw_path) in _TRADING_PATHS else None
