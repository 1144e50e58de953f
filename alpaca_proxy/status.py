"""What the status page, /status.json and /healthz say: a snapshot of the proxy.

Key ids appear, secrets never: nothing here reads ``Credentials.secret``.
"""

from __future__ import annotations

from typing import Any, Iterable

from alpaca_proxy import __version__
from alpaca_proxy.proxy import DEFAULT_HEALTH_GRACE


def _session(session: Any, now: float) -> dict[str, Any]:
    return {
        "endpoint": session.stream.path,
        "kind": session.stream.kind,
        "account": session.credentials.key,
        "state": session.state,
        "connected_since": session.ready_since,
        "reconnects": session.reconnects,
        "clients": len(session.clients),
        "subscriptions": session.subscription_count,
        "messages_in": session.incoming.total,
        "messages_per_second": round(session.incoming.rate(now), 1),
        "bytes_in": session.bytes_in,
        "messages_out": session.messages_out,
        "last_error": session.last_error,
    }


def _client(client: Any, now: float) -> dict[str, Any]:
    session = client.session
    subscriptions = session.subscriptions_of(client) if session is not None else 0
    return {
        "id": client.client_id,
        "peer": client.peer_name,
        "path": client.stream.path if client.stream else None,
        "encoding": client.encoding.name,
        "account": session.credentials.key if session is not None else None,
        "authenticated": session is not None,
        "subscriptions": subscriptions,
        "messages_sent": client.messages_sent,
        "buffered_bytes": client.buffered,
        "connected_for": round(now - client.connected_at, 1),
    }


def snapshot(pool: Any, clients: Iterable[Any], stats: Any, now: float,
             series_seconds: int = 300, simulated: bool = False) -> dict[str, Any]:
    """The whole picture, as plain data (JSON-ready)."""
    sessions = pool.sessions
    series = [0.0] * series_seconds
    for session in sessions:
        for i, count in enumerate(session.incoming.series(now, series_seconds)):
            series[i] += count
    return {
        "version": __version__,
        "simulated": simulated,
        "now": now,
        "healthy": healthy(sessions, now),
        "upstreams": [_session(s, now) for s in sessions],
        "clients": sorted((_client(c, now) for c in clients),
                          key=lambda c: (c["path"] or "", c["peer"] or "")),
        "messages_per_second": series,
        "errors": {str(code): count for code, count in sorted(stats.errors.items())},
        "slow_clients": stats.slow_clients,
    }


def healthy(sessions: Iterable[Any], now: float, grace: float = DEFAULT_HEALTH_GRACE) -> bool:
    """False when an endpoint with clients has had no upstream for longer than ``grace``,
    or when an upstream that never accepted its account cannot even be reached."""
    return not any(
        (session.clients or session.waiting) and session.state != "ready"
        and now - session.down_since > grace
        or session.state == "unreachable" and not session.verified
        for session in sessions)


def unhealthy_reasons(sessions: Iterable[Any]) -> list[str]:
    """What /healthz names when it answers 503: each upstream not ready, and why."""
    return ["%s (%s): %s%s" % (session.stream.path, session.credentials.key, session.state,
                               ": " + session.last_error if session.last_error else "")
            for session in sessions if session.state != "ready"]


def cluster(bus: Any, sessions: Iterable[Any], now: float) -> dict[str, Any]:
    """With --bus: this node, the nodes seen on the bus, and who holds each upstream."""
    return {
        "node": bus.node,
        "connected": bus.connected,
        "lease_ttl": bus.lease_ttl,
        "reconnects": bus.reconnects,
        "lease_changes": bus.lease_changes,
        "nodes": sorted(({"node": name, "holding": info.get("holding", []),
                          "seen_ago": round(now - info.get("seen", now), 1)}
                         for name, info in bus.nodes.items()), key=lambda n: n["node"]),
        "upstreams": [session.link.snapshot() for session in sessions
                      if hasattr(session.link, "snapshot")],
    }
