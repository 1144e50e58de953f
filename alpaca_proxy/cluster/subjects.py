"""Names on the bus: subjects, lease keys, and the per-symbol feed.

Account tokens are key ids (public: the status page shows them), never secrets.
A NATS subject token may not hold ``.``, ``*``, ``>`` or whitespace, so those
become ``_`` (``BRK.B`` is published as ``BRK_B``).
"""

from __future__ import annotations

import re

#: Every subject and bucket of the proxy starts with this.
PREFIX = "alpaca_proxy"
#: JetStream key-value buckets: leases (TTL = --lease-ttl) and the node registry.
LEASES = "alpaca_proxy_leases"
NODES = "alpaca_proxy_nodes"

#: What a key-value key part may hold (JetStream allows ``[-/_=.a-zA-Z0-9]``; ``.``
#: separates the parts here).
_NOT_KEY = re.compile(r"[^A-Za-z0-9_\-=]")
#: What a subject token may not hold.
_NOT_SUBJECT = re.compile(r"[.*>\s]")


def token(text: str) -> str:
    """A key-value key part (and subject token) standing for ``text``."""
    return _NOT_KEY.sub("_", text) or "_"


def subject_token(text: str) -> str:
    """A subject token standing for ``text`` (``BTC/USD`` stays, ``BRK.B`` -> ``BRK_B``)."""
    return _NOT_SUBJECT.sub("_", text) or "_"


def endpoint_token(path: str) -> str:
    """``/v2/iex`` -> ``v2-iex``; ``/v1beta3/crypto/us`` -> ``v1beta3-crypto-us``."""
    return token(path.strip("/").replace("/", "-"))


def lease_key(account: str, path: str) -> str:
    return "%s.%s" % (token(account), endpoint_token(path))


def frames(account: str, path: str) -> str:
    """Where the holder puts each upstream frame, once."""
    return "%s.frames.%s" % (PREFIX, lease_key(account, path))


def changes(account: str, path: str) -> str:
    """Where nodes send the holder their subscription changes (request/reply)."""
    return "%s.changes.%s" % (PREFIX, lease_key(account, path))


def symbol_feed(path: str, channel: str, symbol: str) -> str:
    """``--bus-symbols``: ``alpaca.v2-iex.trades.AAPL``, one message as Alpaca's JSON."""
    return "alpaca.%s.%s.%s" % (endpoint_token(path), subject_token(channel),
                                subject_token(symbol))


def node_key(name: str) -> str:
    return token(name)
