"""``--simulate``: the fake upstreams, with seeded markets, on loopback ports of their own."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from alpaca_proxy.simulator.alpaca import FakeAlpacaFactory, SimulatedMarket
from alpaca_proxy.simulator.polygon import FakePolygonFactory, PolygonMarket


class SimulatorService(Service):
    """The simulated upstreams (Alpaca's and Polygon's), each on a loopback port of its own."""

    _log = Logger()

    def __init__(self, reactor, rate: float = 2.0, seed: int = 1):
        self._reactor = reactor
        self.market = SimulatedMarket(reactor, seed=seed, rate=rate)
        self.factory = FakeAlpacaFactory(market=self.market, clock=reactor)
        self.polygon = FakePolygonFactory(clock=reactor)
        self.polygon_market = PolygonMarket(reactor, self.polygon, seed=seed, rate=rate)
        self.url: str | None = None
        self.polygon_url: str | None = None
        self._ports: list[Any] = []

    def data_url(self) -> str:
        """Where the simulated Alpaca streams listen (market data and trading)."""
        assert self.url is not None, "simulator not listening yet"
        return self.url

    def polygon_cluster_url(self) -> str:
        """Where the simulated Polygon clusters listen."""
        assert self.polygon_url is not None, "simulator not listening yet"
        return self.polygon_url

    def startService(self):
        super().startService()
        endpoint = serverFromString(self._reactor, "tcp:0:interface=127.0.0.1")

        def url(port) -> str:
            self._ports.append(port)
            return "ws://127.0.0.1:%d" % (port.getHost().port,)

        def listened(ports):
            self.url, self.polygon_url = ports
            self._log.warn(
                "SIMULATED MARKET: upstream data comes from the built-in simulator at {url}"
                " (Polygon paths: {polygon}); no prices are real.", url=self.url,
                polygon=self.polygon_url)
            self.market.start()
            self.polygon_market.start()

        alpaca = endpoint.listen(self.factory).addCallback(url)
        polygon = endpoint.listen(self.polygon).addCallback(url)
        return gatherResults([alpaca, polygon], consumeErrors=True).addCallback(listened)

    def stopService(self):
        super().stopService()
        self.market.stop()
        self.polygon_market.stop()
        ports, self._ports = self._ports, []
        return gatherResults([maybeDeferred(port.stopListening) for port in ports])
