"""Which upstream endpoint a local websocket path stands for.

Clients only change the host part of their stream URL, so the proxy accepts the
paths each SDK builds (see ``downstream.py``) and maps them to the upstream path
they would have dialled at Alpaca.
"""

from __future__ import annotations

import re

from attrs import frozen

STOCKS = "stocks"
CRYPTO = "crypto"
NEWS = "news"
OPTIONS = "options"
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
    # alpaca-trade-api 3.2 still dials v1beta2, which Alpaca answers with HTTP 404;
    # the message shapes are the same, so it is served from v1beta3's "us" feed.
    (re.compile(r"/v1beta2/crypto"), CRYPTO, "/v1beta3/crypto/us"),
    (re.compile(r"/v1beta1/news"), NEWS, "/v1beta1/news"),
    (re.compile(r"/v1beta1/(indicative|opra)"), OPTIONS, "/v1beta1/{0}"),
]


@frozen
class Endpoint:
    """An upstream market-data endpoint: its kind and its path on the data host."""

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


def resolve(raw_path: str, default_feed: str) -> Endpoint | None:
    """The upstream endpoint a local request path asks for, or ``None``."""
    path = normalize(raw_path)
    if path == "/":
        return Endpoint(STOCKS, "/v2/" + default_feed)
    for pattern, kind, template in _RULES:
        match = pattern.fullmatch(path)
        if match:
            return Endpoint(kind, template.format(*match.groups()))
    bare = path[1:]
    if bare in _BARE_STOCK_FEEDS:
        return Endpoint(STOCKS, "/v2/" + bare)
    if bare in _BARE_CRYPTO_LOCATIONS:
        return Endpoint(CRYPTO, "/v1beta3/crypto/" + bare)
    if bare in _OPTION_FEEDS:
        return Endpoint(OPTIONS, "/v1beta1/" + bare)
    return None


def resolve_polygon(raw_path: str, root_market: str | None = None) -> Endpoint | None:
    """The Polygon cluster a local path asks for (``/stocks``, ``/futures/cme`` ...).

    ``/`` stands for ``root_market`` when the proxy serves Polygon there.
    """
    path = normalize(raw_path)
    if path == "/" and root_market:
        return Endpoint(POLYGON, "/" + root_market)
    if path[1:] in POLYGON_MARKETS:
        return Endpoint(POLYGON, path)
    return None
