"""The twistd service tree: ``makeService`` is the only place the global reactor is used."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from alpaca_proxy.downstream import DownstreamFactory, Limits
from alpaca_proxy.options import Options
from alpaca_proxy.polygon import PolygonProtocol
from alpaca_proxy.pool import UpstreamPool
from alpaca_proxy.simulator import SimulatorService
from alpaca_proxy.stats import ProxyStats
from alpaca_proxy.trading import TradingProtocol
from alpaca_proxy.upstream import Health
from alpaca_proxy.web import StreamSite

__all__ = ["Options", "makeService"]

_log = Logger()


class ListenerService(StreamServerEndpointService):
    """The local listener; on stop, every client gets a 1001 "going away" close first."""

    def stopService(self):
        self.factory.close_all(1001, "alpaca-proxy shutting down")  # the StreamSite
        return super().stopService()


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """Simulator (with ``--simulate``), upstream pool and local listener, in that order."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    top = MultiService()
    if options["simulate"]:
        simulator = SimulatorService(reactor, rate=options["sim-rate"])
        simulator.setName("simulator")
        simulator.setServiceParent(top)

        def data_url() -> str:
            assert simulator.url is not None, "simulator not listening yet"
            return simulator.url

        def trading_url() -> str:
            return data_url()

        def polygon_url() -> str:
            assert simulator.polygon_url is not None, "simulator not listening yet"
            return simulator.polygon_url
    else:
        def data_url() -> str:
            return options["data-url"]

        def trading_url() -> str:
            return options["trading-url"]

        def polygon_url() -> str:
            return options["polygon-url"]

    health = Health(ping_interval=options["ping-interval"], ping_timeout=options["ping-timeout"],
                    silence_timeout=options["silence-timeout"])
    pool = UpstreamPool(reactor, data_url, accounts=options["accounts"],
                        linger=options["linger"], trading_url=trading_url, health=health,
                        trust_root=options["trust-root"], polygon_url=polygon_url,
                        polygon_accounts=options["polygon-accounts"])
    pool.setName("upstreams")
    pool.setServiceParent(top)
    limits = Limits(buffer_bytes=options["client-buffer"],
                    symbols_per_request=options["max-request-symbols"],
                    symbols_per_client=options["max-symbols"],
                    messages_per_second=options["max-rate"], clients=options["max-clients"])
    settings = dict(default_feed=options["feed"], auth_timeout=options["auth-timeout"],
                    limits=limits, clients=set(), origins=options["origins"],
                    stats=ProxyStats())
    data = DownstreamFactory(pool, reactor, **settings)
    trading = DownstreamFactory(pool, reactor, protocol=TradingProtocol, **settings)
    polygon = DownstreamFactory(pool, reactor, protocol=PolygonProtocol,
                                polygon_root="stocks" if options["use-polygon"] else None,
                                **settings)
    site = StreamSite(data, trading, health_grace=options["health-grace"],
                      polygon_factory=polygon)
    listener = ListenerService(serverFromString(reactor, options["listen"]), site)
    listener._raiseSynchronously = True  # a port that cannot be bound fails startup
    listener.setName("listener")
    listener.setServiceParent(top)
    top.site = site  # type: ignore[attr-defined]
    top.pool = pool  # type: ignore[attr-defined]
    return top
