"""The object graph, built once: ``build`` for twistd and the tests alike.

``makeService`` is the only place the global reactor is used: it reads the
options, starts the simulator with ``--simulate``, and hangs the pool and the
listener built by ``build`` under one ``MultiService``.
"""

from __future__ import annotations

import errno
import signal
from typing import Any, Callable, Mapping

from attrs import field, frozen
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from alpaca_proxy import __version__
from alpaca_proxy.credentials import Credentials
from alpaca_proxy.downstream.alpaca_data import AlpacaDataProtocol
from alpaca_proxy.downstream.alpaca_trading import TradingProtocol
from alpaca_proxy.downstream.client import ClientFactory
from alpaca_proxy.downstream.polygon import PolygonProtocol
from alpaca_proxy.downstream.outbox import Outbox
from alpaca_proxy.options import Options
from alpaca_proxy.proxy import DEFAULT_HEALTH_GRACE, Limits, Proxy
from alpaca_proxy.recording.player import Player
from alpaca_proxy.recording.recorder import Recorder
from alpaca_proxy.recording.worker import SerialWorker
from alpaca_proxy.rest import RestForwarder
from alpaca_proxy.simulator.service import SimulatorService
from alpaca_proxy.upstream.link import Liveness
from alpaca_proxy.upstream.pool import UpstreamPool
from alpaca_proxy.web import StreamSite

__all__ = ["Options", "Settings", "build", "makeService"]


@frozen
class Settings:
    """Everything ``build`` needs; ``from_options`` reads it off the command line.

    Upstream URLs are functions: the simulator's ports are known only once it
    listens, after the graph is built.
    """

    data_url: Callable[[], str]
    trading_url: Callable[[], str]
    polygon_url: Callable[[], str]
    #: key -> the only pair accepted for it; None: clients bring their own.
    accounts: Mapping[str, Credentials] | None = None
    polygon_accounts: Mapping[str, Credentials] | None = None
    #: Seconds an upstream session without clients stays open.
    linger: float = 30.0
    liveness: Liveness = Liveness()
    #: CAs upstream TLS certificates must chain to (None: the platform's).
    trust_root: Any = None
    limits: Limits = Limits()
    default_feed: str = "iex"
    polygon_root: str | None = None
    auth_timeout: float = 10.0
    origins: frozenset[str] = field(default=frozenset(), converter=frozenset)
    health_grace: float = DEFAULT_HEALTH_GRACE
    #: Host names HTTP requests may name besides loopback ones; None: any.
    hosts: frozenset[str] | None = None
    #: Upstream sessions open at once (0: no limit).
    max_upstreams: int = 64
    access_log: bool = False
    simulated: bool = False
    #: Alpaca's REST bases (None: REST requests are answered 503, as under --simulate).
    data_rest_url: str | None = None
    trading_rest_url: str | None = None
    rest_rate: int = 200
    rest_queue_timeout: float = 10.0
    rest_timeout: float = 30.0
    rest_cache_ms: float = 0.0
    #: Directory every market-data frame is recorded to (None: no recording).
    record: str | None = None
    record_trading: bool = False
    #: Days of recordings kept (0: all).
    record_keep_days: int = 0
    #: The recording served instead of upstream (``recording.catalog.Catalog``), or None.
    replay: Any = None
    replay_speed: float = 1.0
    replay_from: int | None = None
    replay_to: int | None = None
    replay_loop: bool = False
    replay_shift: bool = False
    #: NATS servers nodes share upstreams over (None: this proxy alone), and the rest
    #: of --bus.
    bus: tuple[str, ...] | None = None
    bus_creds: str | None = None
    node_name: str | None = None
    lease_ttl: float = 5.0
    bus_symbols: bool = False
    bus_replicas: int = 1

    @classmethod
    def from_options(cls, options: Options, data_url: Callable[[], str],
                     trading_url: Callable[[], str],
                     polygon_url: Callable[[], str]) -> "Settings":
        # Neither the simulated market nor a replay has REST: only explicitly given
        # REST URLs are used.
        rest = not (options["simulate"] or options["replay"]) or options["rest-explicit"]
        return cls(
            data_url=data_url, trading_url=trading_url, polygon_url=polygon_url,
            accounts=options["accounts"], polygon_accounts=options["polygon-accounts"],
            linger=options["linger"],
            liveness=Liveness(ping_interval=options["ping-interval"],
                              ping_timeout=options["ping-timeout"],
                              silence_timeout=options["silence-timeout"]),
            trust_root=options["trust-root"],
            limits=Limits(buffer_bytes=options["client-buffer"],
                          symbols_per_request=options["max-request-symbols"],
                          symbols_per_client=options["max-symbols"],
                          messages_per_second=options["max-rate"],
                          clients=options["max-clients"],
                          clients_per_address=options["max-clients-per-address"],
                          ping_interval=options["client-ping-interval"],
                          ping_timeout=options["client-ping-timeout"]),
            default_feed=options["feed"],
            polygon_root="stocks" if options["use-polygon"] else None,
            auth_timeout=options["auth-timeout"], origins=options["origins"],
            health_grace=options["health-grace"], hosts=options["hosts"],
            max_upstreams=options["max-upstreams"], access_log=bool(options["access-log"]),
            simulated=bool(options["simulate"]),
            data_rest_url=rest and options["data-rest-url"] or None,
            trading_rest_url=rest and options["trading-rest-url"] or None,
            rest_rate=options["rest-rate"], rest_queue_timeout=options["rest-queue-timeout"],
            rest_timeout=options["rest-timeout"], rest_cache_ms=options["rest-cache-ms"],
            record=options["record"] or None, record_trading=bool(options["record-trading"]),
            record_keep_days=options["record-keep-days"],
            replay=options["replay-catalog"], replay_speed=options["replay-speed"],
            replay_from=options["replay-from"] or None, replay_to=options["replay-to"] or None,
            replay_loop=bool(options["replay-loop"]), replay_shift=bool(options["replay-shift"]),
            bus=tuple(options["bus-servers"]) if options["bus-servers"] else None,
            bus_creds=options["bus-creds"], node_name=options["node-name"],
            lease_ttl=options["lease-ttl"], bus_symbols=bool(options["bus-symbols"]),
            bus_replicas=options["bus-replicas"],
        )


@frozen
class Built:
    """The proxy's shared state and the web site that serves it."""

    proxy: Proxy
    site: StreamSite

    @property
    def pool(self) -> UpstreamPool:
        return self.proxy.pool

    @property
    def recorder(self) -> Recorder | None:
        return self.proxy.recorder

    @property
    def player(self) -> Player | None:
        return self.proxy.replay

    @property
    def bus(self) -> Any:
        return self.proxy.bus

    def services(self) -> list[Service]:
        """What runs, in start order (they stop in reverse: the pool before the recorder
        and the bus, so leases are given up while the bus is there)."""
        return [s for s in (self.recorder, self.player, self.bus, self.pool) if s is not None]


def build(settings: Settings, reactor: Any, clock: Any = None, disk: Any = None) -> Built:
    """The pool, the shared ``Proxy`` state, the client factories and the site.

    ``reactor`` makes connections; ``clock`` runs timers (the reactor unless a
    test gives a ``Clock``); ``disk`` runs the recorder's and the player's file
    work (a thread of their own each unless a test gives a worker).  Nothing is
    started: the caller starts ``Built.services()`` and listens.
    """
    clock = reactor if clock is None else clock
    recorder = player = None
    if settings.record:
        recorder = Recorder(settings.record, clock,
                            disk or SerialWorker(reactor, "alpaca-proxy-recorder", nice=10),
                            record_trading=settings.record_trading,
                            keep_days=settings.record_keep_days)
    if settings.replay is not None:
        player = Player(settings.replay, clock,
                        disk or SerialWorker(reactor, "alpaca-proxy-replay"),
                        speed=settings.replay_speed, start_ns=settings.replay_from,
                        end_ns=settings.replay_to, loop=settings.replay_loop,
                        shift=settings.replay_shift)
    bus = None
    if settings.bus:
        from alpaca_proxy.cluster.bus import Bus, default_node_name  # nats only with --bus

        bus = Bus(list(settings.bus), settings.node_name or default_node_name(),
                  settings.lease_ttl, clock, creds=settings.bus_creds,
                  replicas=settings.bus_replicas)
    pool = UpstreamPool(reactor, settings.data_url, accounts=settings.accounts,
                        trading_url=settings.trading_url, linger=settings.linger, clock=clock,
                        liveness=settings.liveness, trust_root=settings.trust_root,
                        polygon_url=settings.polygon_url,
                        polygon_accounts=settings.polygon_accounts,
                        max_sessions=settings.max_upstreams, recorder=recorder, player=player,
                        bus=bus, bus_symbols=settings.bus_symbols)
    proxy = Proxy(clock=clock, pool=pool, limits=settings.limits,
                  default_feed=settings.default_feed, polygon_root=settings.polygon_root,
                  auth_timeout=settings.auth_timeout, origins=settings.origins,
                  health_grace=settings.health_grace, hosts=settings.hosts,
                  access_log=settings.access_log, simulated=settings.simulated,
                  recorder=recorder, replay=player, bus=bus, outbox=Outbox(reactor))
    rest = RestForwarder(proxy, reactor, settings.data_rest_url, settings.trading_rest_url,
                         rate=settings.rest_rate, queue_timeout=settings.rest_queue_timeout,
                         timeout=settings.rest_timeout, trust_root=settings.trust_root,
                         cache_ms=settings.rest_cache_ms)
    pool.on_trade_update = rest.forget_account
    site = StreamSite(proxy, data=ClientFactory(proxy, AlpacaDataProtocol),
                      trading=ClientFactory(proxy, TradingProtocol),
                      polygon=ClientFactory(proxy, PolygonProtocol), rest=rest)
    return Built(proxy, site)


def describe(problem: CannotListenError) -> str:
    """A bind failure in one line: where, and why (in use, not permitted ...)."""
    reason = problem.socketError
    why = getattr(reason, "strerror", None) or str(reason)
    hint = {
        errno.EADDRINUSE: " (another alpaca-proxy? choose another port with --listen)",
        errno.EACCES: " (ports below 1024 need privileges: choose a higher one with --listen)",
    }.get(getattr(reason, "errno", None), "")
    return "cannot listen on %s:%s: %s%s" % (problem.interface or "*", problem.port, why, hint)


#: What the start-up lines offer to paste, per stream: (name, path, note).
ANNOUNCED_STREAMS = (
    ("stocks", "/v2/iex", "also /v2/sip, /v2/delayed_sip, /v2/test"),
    ("crypto", "/v1beta3/crypto/us", ""),
    ("crypto perps", "/v1beta1/crypto-perps/global", ""),
    ("news", "/v1beta1/news", ""),
    ("options", "/v1beta1/opra", "MessagePack only; also /v1beta1/indicative"),
    ("trading", "/stream", "order updates"),
    ("polygon", "/stocks", "Polygon/Massive clients: /stocks, /crypto, /forex ..."),
)


class ListenerService(StreamServerEndpointService):
    """The local listener; on stop, every client gets a 1001 "going away" close first."""

    _log = Logger()

    def __init__(self, endpoint: Any, site: StreamSite, tls: bool = False) -> None:
        super().__init__(endpoint, site)
        self._raiseSynchronously = True  # a port that cannot be bound fails startup
        self._tls = tls

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as problem:
            raise SystemExit("alpaca-proxy: %s" % (describe(problem),)) from None
        self._waitingForPort.addCallback(self._announce)

    def _announce(self, port: Any) -> Any:
        """Say where to connect: the page and a URL to paste for each stream."""
        address = port.getHost()
        host = address.host if address.host not in ("0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = "[%s]" % (host,)
        base = "%s:%d" % (host, address.port)
        ws, http = ("wss", "https") if self._tls else ("ws", "http")
        announced = ANNOUNCED_STREAMS
        replay = self.factory.proxy.replay
        if replay is not None:  # only what the recording holds is served
            announced = tuple(("replay", path, "") for path in sorted(replay.endpoints))
        lines = ["  %-13s %s://%s%s%s" % (name, ws, base, path, "   (%s)" % note if note else "")
                 for name, path, note in announced]
        self._log.info("alpaca-proxy {version} listening on {base}\n  status page   {page}\n"
                       "{streams}", version=__version__, base=base,
                       page="%s://%s/" % (http, base), streams="\n".join(lines))
        return port

    def stopService(self):
        self.factory.proxy.close_all(1001, "alpaca-proxy shutting down")
        self.factory.proxy.notes.stop()
        stopping = super().stopService()
        self.factory.rest.close()
        return stopping


class HangupService(Service):
    """SIGHUP stops the proxy cleanly, as SIGTERM does.

    Without a handler the default action kills the process at once: clients get
    no close frame and upstream keeps the account's slot for about 90 s.  A
    closed terminal or a ``kill -HUP`` out of habit now stops it the way SIGTERM
    does (systemd's ``Restart=`` brings it back); there is nothing to reload.
    """

    _log = Logger()

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        try:
            self._previous = signal.signal(signal.SIGHUP, self._hangup)
        except ValueError:  # not the main thread (an embedding program's choice)
            self._previous = None

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _hangup(self, signum: int, frame: Any) -> None:
        self._log.warn("SIGHUP: stopping cleanly, as for SIGTERM")
        self._reactor.callFromThread(self._reactor.stop)


def _asyncio_reactor(reactor: Any) -> bool:
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    return isinstance(reactor, AsyncioSelectorReactor)


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
        urls = (simulator.data_url, simulator.data_url, simulator.polygon_cluster_url)
    else:
        urls = (lambda: options["data-url"], lambda: options["trading-url"],
                lambda: options["polygon-url"])
    if options["bus-servers"] and not _asyncio_reactor(reactor):
        raise SystemExit("alpaca-proxy: --bus needs Twisted's asyncio reactor: start it with"
                         " `twistd -r asyncio -n alpaca-proxy ...` (the alpaca-proxy command"
                         " chooses it by itself)")
    built = build(Settings.from_options(options, *urls), reactor)
    if built.bus is not None:
        built.bus.setName("bus")
        built.bus.setServiceParent(top)  # before the pool: leases go before the bus does
    if built.recorder is not None:
        built.recorder.setName("recorder")
        built.recorder.setServiceParent(top)  # before the pool: it stops after it
    if built.player is not None:
        built.player.setName("replay")
        built.player.setServiceParent(top)
    built.pool.setName("upstreams")
    built.pool.setServiceParent(top)
    listener = ListenerService(serverFromString(reactor, options["listen"]), built.site,
                               tls=options["listen"].startswith("ssl:"))
    listener.setName("listener")
    listener.setServiceParent(top)
    hangup = HangupService(reactor)
    hangup.setName("hangup")
    hangup.setServiceParent(top)
    top.site = built.site  # type: ignore[attr-defined]
    top.pool = built.pool  # type: ignore[attr-defined]
    return top
