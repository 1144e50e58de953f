"""/metrics for Prometheus: a collector that reads the live objects at scrape time.

Nothing is counted twice: sessions, clients and ``ProxyStats`` keep the numbers,
this only names them.  The registry is the proxy's own, not prometheus_client's
global one.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

_SESSION = ["endpoint", "account"]


class ProxyCollector(Collector):
    def __init__(self, pool: Any, clients: Any, stats: Any, rest: Any = None,
                 recorder: Any = None, replay: Any = None, bus: Any = None) -> None:
        self._pool = pool
        self._clients = clients
        self._stats = stats
        self._rest = rest
        self._recorder = recorder
        self._replay = replay
        self._bus = bus

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("alpaca_proxy_upstream_up",
                               "1 while the upstream connection is authenticated", labels=_SESSION)
        reconnects = CounterMetricFamily("alpaca_proxy_upstream_reconnects",
                                         "Authenticated upstream connections lost", labels=_SESSION)
        messages_in = CounterMetricFamily("alpaca_proxy_upstream_messages",
                                          "Data messages received from upstream", labels=_SESSION)
        bytes_in = CounterMetricFamily("alpaca_proxy_upstream_received_bytes",
                                       "Bytes received from upstream", labels=_SESSION)
        messages_out = CounterMetricFamily("alpaca_proxy_client_messages",
                                           "Data messages sent to clients", labels=_SESSION)
        bytes_out = CounterMetricFamily("alpaca_proxy_client_sent_bytes",
                                        "Data bytes sent to clients", labels=_SESSION)
        subscriptions = GaugeMetricFamily("alpaca_proxy_upstream_subscriptions",
                                          "Channel/symbol pairs subscribed upstream",
                                          labels=_SESSION)
        for session in self._pool.sessions:
            labels = [session.stream.path, session.credentials.key]
            up.add_metric(labels, 1 if session.state == "ready" else 0)
            reconnects.add_metric(labels, session.reconnects)
            messages_in.add_metric(labels, session.incoming.total)
            bytes_in.add_metric(labels, session.bytes_in)
            messages_out.add_metric(labels, session.messages_out)
            bytes_out.add_metric(labels, session.bytes_out)
            subscriptions.add_metric(labels, session.subscription_count)
        yield from (up, reconnects, messages_in, bytes_in, messages_out, bytes_out,
                    subscriptions)

        clients = GaugeMetricFamily("alpaca_proxy_clients", "Connected local clients",
                                    labels=["endpoint"])
        by_endpoint: dict[str, int] = {}
        for client in list(self._clients):
            path = client.stream.path if client.stream else "?"
            by_endpoint[path] = by_endpoint.get(path, 0) + 1
        for path, count in sorted(by_endpoint.items()):
            clients.add_metric([path], count)
        yield clients

        yield CounterMetricFamily("alpaca_proxy_slow_client_drops",
                                  "Clients closed for not reading (407)",
                                  value=self._stats.slow_clients)
        errors = CounterMetricFamily("alpaca_proxy_client_errors",
                                     "Error messages sent to clients", labels=["code"])
        for code, count in sorted(self._stats.errors.items()):
            errors.add_metric([str(code)], count)
        yield errors
        refused = CounterMetricFamily("alpaca_proxy_refused_handshakes",
                                      "Websocket upgrades refused", labels=["status"])
        for status, count in sorted(self._stats.refused.items()):
            refused.add_metric([str(status)], count)
        yield refused
        if self._rest is not None:
            yield from self._rest_metrics()
        if self._recorder is not None:
            recorder = self._recorder
            yield CounterMetricFamily("alpaca_proxy_recorded_frames",
                                      "Upstream frames recorded (--record)",
                                      value=recorder.frames)
            yield CounterMetricFamily("alpaca_proxy_recording_written_bytes",
                                      "Compressed bytes written to recordings",
                                      value=recorder.written)
            yield CounterMetricFamily("alpaca_proxy_recording_dropped_frames",
                                      "Frames not recorded: the disk was too far behind",
                                      value=recorder.dropped)
            yield CounterMetricFamily("alpaca_proxy_recording_failed_writes",
                                      "Recording blocks that could not be written",
                                      value=recorder.failed_writes)
        if self._bus is not None:
            bus = self._bus
            yield GaugeMetricFamily("alpaca_proxy_bus_connected",
                                    "1 while this node is connected to the bus",
                                    value=1 if bus.connected else 0)
            yield CounterMetricFamily("alpaca_proxy_bus_reconnects",
                                      "Times the bus connection came back", value=bus.reconnects)
            yield CounterMetricFamily("alpaca_proxy_lease_changes",
                                      "Upstream leases this node took or gave up",
                                      value=bus.lease_changes)
            held = GaugeMetricFamily("alpaca_proxy_upstream_held",
                                     "1 while this node holds the upstream's lease",
                                     labels=_SESSION)
            for session in self._pool.sessions:
                role = getattr(session.link, "role", None)
                held.add_metric([session.stream.path, session.credentials.key],
                                1 if role == "holder" else 0)
            yield held
        if self._replay is not None:
            position = self._replay.position_ns
            yield GaugeMetricFamily("alpaca_proxy_replay_position_seconds",
                                    "Receive time of the last replayed frame (Unix seconds)",
                                    value=position / 1e9 if position is not None else 0)
            yield CounterMetricFamily("alpaca_proxy_replay_frames",
                                      "Recorded frames played (--replay)",
                                      value=self._replay.frames_played)

    def _rest_metrics(self) -> Iterator[Any]:
        from alpaca_proxy.rest import WAIT_BUCKETS

        requests = CounterMetricFamily("alpaca_proxy_rest_requests",
                                       "REST requests answered, by account and status class",
                                       labels=["account", "status_class"])
        for (key, status_class), count in sorted(self._rest.stats.requests.items()):
            requests.add_metric([key, status_class], count)
        yield requests
        yield GaugeMetricFamily("alpaca_proxy_rest_waiting",
                                "REST requests waiting for their account's rate budget",
                                value=self._rest.waiting)
        stats = self._rest.stats
        buckets = [(str(bound), count) for bound, count in zip(WAIT_BUCKETS, stats.wait_buckets)]
        buckets.append(("+Inf", stats.wait_buckets[-1]))
        yield HistogramMetricFamily("alpaca_proxy_rest_wait_seconds",
                                    "Time REST requests waited for the rate budget",
                                    buckets=buckets, sum_value=stats.wait_sum)
        left = GaugeMetricFamily("alpaca_proxy_rest_budget_remaining",
                                 "Requests left in the account's current window",
                                 labels=["account", "host"])
        for budget in self._rest.snapshot()["budgets"]:
            left.add_metric([budget["account"], budget["host"]], budget["remaining"])
        yield left


def registry_for(pool: Any, clients: Any, stats: Any, rest: Any = None,
                 recorder: Any = None, replay: Any = None, bus: Any = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(pool, clients, stats, rest, recorder, replay, bus))
    return registry
