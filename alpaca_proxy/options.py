"""Command-line options; each may also come from an environment variable.

Precedence: command line, then environment, then the default.  Credentials come
only from the environment (never argv, where ``ps`` shows them).  The upstream
is never read from ``APCA_API_STREAM_URL``: clients use that variable to point
at the proxy, so reading it would loop the proxy onto itself.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from typing import Mapping

from hyperlink import URL
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from alpaca_proxy import __version__
from alpaca_proxy.credentials import Credentials
from alpaca_proxy.dialects.polygon import credentials_for
from alpaca_proxy.net import load_ca_bundle
from alpaca_proxy.recording.catalog import Catalog, NotARecording

#: option name -> environment variable
ENVIRONMENT = {
    "listen": "ALPACA_PROXY_LISTEN",
    "data-url": "ALPACA_PROXY_DATA_URL",
    "trading-url": "ALPACA_PROXY_TRADING_URL",
    "feed": "ALPACA_PROXY_FEED",
    "linger": "ALPACA_PROXY_LINGER",
    "auth-timeout": "ALPACA_PROXY_AUTH_TIMEOUT",
    "sim-rate": "ALPACA_PROXY_SIM_RATE",
    "credentials-file": "ALPACA_PROXY_CREDENTIALS_FILE",
    "ca-bundle": "ALPACA_PROXY_CA_BUNDLE",
    "allow-origin": "ALPACA_PROXY_ALLOW_ORIGIN",
    "health-grace": "ALPACA_PROXY_HEALTH_GRACE",
    "client-buffer": "ALPACA_PROXY_CLIENT_BUFFER",
    "max-clients": "ALPACA_PROXY_MAX_CLIENTS",
    "max-symbols": "ALPACA_PROXY_MAX_SYMBOLS",
    "max-request-symbols": "ALPACA_PROXY_MAX_REQUEST_SYMBOLS",
    "max-rate": "ALPACA_PROXY_MAX_RATE",
    "ping-interval": "ALPACA_PROXY_PING_INTERVAL",
    "ping-timeout": "ALPACA_PROXY_PING_TIMEOUT",
    "silence-timeout": "ALPACA_PROXY_SILENCE_TIMEOUT",
    "polygon-url": "ALPACA_PROXY_POLYGON_URL",
    "max-clients-per-address": "ALPACA_PROXY_MAX_CLIENTS_PER_ADDRESS",
    "max-upstreams": "ALPACA_PROXY_MAX_UPSTREAMS",
    "client-ping-interval": "ALPACA_PROXY_CLIENT_PING_INTERVAL",
    "client-ping-timeout": "ALPACA_PROXY_CLIENT_PING_TIMEOUT",
    "allow-host": "ALPACA_PROXY_ALLOW_HOST",
    "data-rest-url": "ALPACA_PROXY_DATA_REST_URL",
    "trading-rest-url": "ALPACA_PROXY_TRADING_REST_URL",
    "rest-rate": "ALPACA_PROXY_REST_RATE",
    "rest-queue-timeout": "ALPACA_PROXY_REST_QUEUE_TIMEOUT",
    "rest-timeout": "ALPACA_PROXY_REST_TIMEOUT",
    "rest-cache-ms": "ALPACA_PROXY_REST_CACHE_MS",
    "record": "ALPACA_PROXY_RECORD",
    "record-keep-days": "ALPACA_PROXY_RECORD_KEEP_DAYS",
    "replay": "ALPACA_PROXY_REPLAY",
    "replay-speed": "ALPACA_PROXY_REPLAY_SPEED",
    "replay-from": "ALPACA_PROXY_REPLAY_FROM",
    "replay-to": "ALPACA_PROXY_REPLAY_TO",
    "bus": "ALPACA_PROXY_BUS",
    "bus-creds": "ALPACA_PROXY_BUS_CREDS",
    "node-name": "ALPACA_PROXY_NODE_NAME",
    "lease-ttl": "ALPACA_PROXY_LEASE_TTL",
    "bus-replicas": "ALPACA_PROXY_BUS_REPLICAS",
}
#: flag name -> environment variable (true, yes, 1 or on sets it)
FLAG_ENVIRONMENT = {
    "simulate": "ALPACA_PROXY_SIMULATE",
    "use-polygon": "USE_POLYGON",
    "access-log": "ALPACA_PROXY_ACCESS_LOG",
    "record-trading": "ALPACA_PROXY_RECORD_TRADING",
    "replay-loop": "ALPACA_PROXY_REPLAY_LOOP",
    "replay-shift": "ALPACA_PROXY_REPLAY_SHIFT",
    "bus-symbols": "ALPACA_PROXY_BUS_SYMBOLS",
}

#: Polygon/Massive clusters by name, for --polygon-url (the massive client's hosts).
POLYGON_CLUSTERS = {
    "real-time": "wss://socket.massive.com",
    "delayed": "wss://delayed.massive.com",
}

_TRUE = {"1", "true", "yes", "on"}


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Hold one upstream Alpaca market-data websocket per endpoint and serve it to any"
        " number of local clients (Polygon/Massive's too).  Credentials come from"
        " APCA_API_KEY_ID and APCA_API_SECRET_KEY (POLYGON_API_KEY or MASSIVE_API_KEY);"
        " without them, clients' own credentials are used."
    )

    optParameters = [
        ["listen", "l", "tcp:8765:interface=127.0.0.1",
         "Twisted server endpoint for local clients [env ALPACA_PROXY_LISTEN]."],
        ["data-url", None, "wss://stream.data.alpaca.markets",
         "Upstream market-data base URL (ws:// or wss://) [env ALPACA_PROXY_DATA_URL]."],
        ["trading-url", None, "wss://paper-api.alpaca.markets",
         "Upstream trading-stream base URL [env ALPACA_PROXY_TRADING_URL]."],
        ["data-rest-url", None, "https://data.alpaca.markets",
         "Alpaca's market-data REST base URL, for REST requests on the proxy's port"
         " [env ALPACA_PROXY_DATA_REST_URL]."],
        ["trading-rest-url", None, None,
         "Alpaca's trading REST base URL; default: --trading-url with https:// (http:// for"
         " ws://) [env ALPACA_PROXY_TRADING_REST_URL]."],
        ["rest-rate", None, 200,
         "REST requests a minute per account and host before upstream's first answer says"
         " its own limit [env ALPACA_PROXY_REST_RATE]."],
        ["rest-queue-timeout", None, 10.0,
         "Seconds a REST request may wait for the account's rate budget; then 429"
         " [env ALPACA_PROXY_REST_QUEUE_TIMEOUT]."],
        ["rest-timeout", None, 30.0,
         "Seconds to wait for Alpaca's REST answer: then 504 for GET/HEAD, 502 (outcome"
         " unknown) for anything else; never retried [env ALPACA_PROXY_REST_TIMEOUT]."],
        ["rest-cache-ms", None, 0.0,
         "Milliseconds GET /v2/account, /v2/clock and /v2/positions answers are reused per key"
         " pair; emptied by the account's trade updates; 0 off"
         " [env ALPACA_PROXY_REST_CACHE_MS]."],
        ["feed", None, "iex",
         "Stock feed served at / [env ALPACA_PROXY_FEED; IS_PRO=true means sip]."],
        ["linger", None, 30.0,
         "Seconds an upstream stays open after its last client leaves"
         " [env ALPACA_PROXY_LINGER]."],
        ["auth-timeout", None, 10.0,
         "Seconds a client has to authenticate [env ALPACA_PROXY_AUTH_TIMEOUT]."],
        ["sim-rate", None, 2.0,
         "With --simulate: market ticks per second [env ALPACA_PROXY_SIM_RATE]."],
        ["ping-interval", None, 10.0,
         "Seconds between pings to each upstream [env ALPACA_PROXY_PING_INTERVAL]."],
        ["ping-timeout", None, 180.0,
         "Seconds without a pong before an upstream is dropped and redialled"
         " [env ALPACA_PROXY_PING_TIMEOUT]."],
        ["silence-timeout", None, 0.0,
         "Seconds without data, while subscribed, before an upstream is taken for mute and"
         " redialled; 0 never [env ALPACA_PROXY_SILENCE_TIMEOUT]."],
        ["client-buffer", None, 8 << 20,
         "Bytes that may pile up for a client that stopped reading; then it gets 407"
         " and is closed [env ALPACA_PROXY_CLIENT_BUFFER]."],
        ["max-clients", None, 1000,
         "Clients connected at once; more get HTTP 503; 0 no limit"
         " [env ALPACA_PROXY_MAX_CLIENTS]."],
        ["max-clients-per-address", None, 256,
         "Clients connected at once from one remote IP address (loopback: --max-clients"
         " only); more get HTTP 503; 0 no limit"
         " [env ALPACA_PROXY_MAX_CLIENTS_PER_ADDRESS]."],
        ["max-upstreams", None, 64,
         "Upstream connections (an account on one stream each) open at once; a client"
         " that would need one more gets 406; 0 no limit [env ALPACA_PROXY_MAX_UPSTREAMS]."],
        ["client-ping-interval", None, 30.0,
         "Seconds between pings to each client; 0 never [env"
         " ALPACA_PROXY_CLIENT_PING_INTERVAL]."],
        ["client-ping-timeout", None, 30.0,
         "Seconds without a pong before a client is dropped"
         " [env ALPACA_PROXY_CLIENT_PING_TIMEOUT]."],
        ["max-symbols", None, 20000,
         "Channel/symbol pairs one client may hold (else 405)"
         " [env ALPACA_PROXY_MAX_SYMBOLS]."],
        ["max-request-symbols", None, 10000,
         "Symbols one subscribe may name (else 405) [env ALPACA_PROXY_MAX_REQUEST_SYMBOLS]."],
        ["max-rate", None, 50.0,
         "Messages a second a client may send (bursts of twice that); past it the client is"
         " closed [env ALPACA_PROXY_MAX_RATE]."],
        ["health-grace", None, 60.0,
         "Seconds an endpoint with clients may be without upstream before /healthz says 503"
         " [env ALPACA_PROXY_HEALTH_GRACE]."],
        ["allow-origin", None, "",
         "Comma-separated web origins whose pages may open websockets (e.g."
         " http://localhost:3000, or *); others are refused with 403, clients that send no"
         " Origin (SDKs) are never affected [env ALPACA_PROXY_ALLOW_ORIGIN]."],
        ["allow-host", None, "",
         "Comma-separated host names HTTP requests may name in their Host header while"
         " the proxy listens on loopback (localhost and loopback addresses always may);"
         " others get 403, against DNS rebinding [env ALPACA_PROXY_ALLOW_HOST]."],
        ["ca-bundle", None, None,
         "PEM file of CAs that upstream TLS certificates must chain to, instead of the"
         " system's (e.g. a corporate proxy's) [env ALPACA_PROXY_CA_BUNDLE]."],
        ["polygon-url", None, "real-time",
         "Upstream Polygon/Massive base URL, or a cluster name: real-time"
         " (wss://socket.massive.com) or delayed (15-minute delayed,"
         " wss://delayed.massive.com) [env ALPACA_PROXY_POLYGON_URL]."],
        ["credentials-file", None, None,
         "File of accounts, one KEY:SECRET per line, in addition to APCA_API_KEY_ID/"
         "APCA_API_SECRET_KEY [env ALPACA_PROXY_CREDENTIALS_FILE]."],
        ["record", None, None,
         "Directory to record every market-data frame to, as received, one compressed file"
         " per endpoint per UTC day [env ALPACA_PROXY_RECORD]."],
        ["record-keep-days", None, 0,
         "With --record: days of recordings kept, today's included; older ones are deleted"
         " at start-up and each UTC midnight; 0 keeps everything"
         " [env ALPACA_PROXY_RECORD_KEEP_DAYS]."],
        ["replay", None, None,
         "A recording (a file or a directory) to serve instead of Alpaca; paths it does"
         " not hold get 404 [env ALPACA_PROXY_REPLAY]."],
        ["replay-speed", None, 1.0,
         "With --replay: 1 the recorded pace, 10 ten times faster, 0 as fast as the"
         " slowest subscribed client reads [env ALPACA_PROXY_REPLAY_SPEED]."],
        ["replay-from", None, None,
         "With --replay: start at this time (RFC 3339, e.g. 2026-12-01T14:30:00Z)"
         " [env ALPACA_PROXY_REPLAY_FROM]."],
        ["replay-to", None, None,
         "With --replay: stop before this time (RFC 3339) [env ALPACA_PROXY_REPLAY_TO]."],
        ["bus", None, None,
         "NATS servers (nats:// or tls://, comma-separated; user:password@ may be in the"
         " URL) that nodes share upstreams over; needs Twisted's asyncio reactor and"
         " configured accounts [env ALPACA_PROXY_BUS]."],
        ["bus-creds", None, None,
         "With --bus: a NATS credentials file (.creds) [env ALPACA_PROXY_BUS_CREDS]."],
        ["node-name", None, None,
         "With --bus: this node's name; default host:pid [env ALPACA_PROXY_NODE_NAME]."],
        ["bus-replicas", None, 1,
         "With --bus: copies JetStream keeps of the lease buckets when it creates them (3 on"
         " a three-server NATS cluster, so leases outlive one server)"
         " [env ALPACA_PROXY_BUS_REPLICAS]."],
        ["lease-ttl", None, 5.0,
         "With --bus: seconds an upstream's lease outlives its holder's last renewal"
         " (renewed every quarter of it) [env ALPACA_PROXY_LEASE_TTL]."],
    ]

    optFlags = [
        ["simulate", None,
         "Serve a built-in simulated market instead of Alpaca [env ALPACA_PROXY_SIMULATE=true]."],
        ["access-log", None,
         "Log a line per HTTP request, the status page's polling included"
         " [env ALPACA_PROXY_ACCESS_LOG=true]."],
        ["use-polygon", None,
         "Serve Polygon/Massive's protocol at / (its stocks cluster) instead of Alpaca's;"
         " /{market} paths are served either way [env USE_POLYGON=true]."],
        ["record-trading", None,
         "With --record: record the trading stream too (it carries account data)"
         " [env ALPACA_PROXY_RECORD_TRADING=true]."],
        ["replay-loop", None,
         "With --replay: start over at the end [env ALPACA_PROXY_REPLAY_LOOP=true]."],
        ["replay-shift", None,
         "With --replay: move message timestamps so the recording seems to happen now"
         " [env ALPACA_PROXY_REPLAY_SHIFT=true]."],
        ["bus-symbols", None,
         "With --bus: also publish each message, as Alpaca's JSON, on"
         " alpaca.<endpoint>.<channel>.<symbol> for any NATS client"
         " [env ALPACA_PROXY_BUS_SYMBOLS=true]."],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ
        #: option name -> the environment variable it was read from (for error messages).
        self._from_environment: dict[str, str] = {}
        for name, variable in ENVIRONMENT.items():
            value = self._environ.get(variable)
            if value:
                self[name] = value
                self._from_environment[name] = variable
        if self._environ.get("IS_PRO", "").strip().lower() in _TRUE and not self._environ.get(
                ENVIRONMENT["feed"]):
            self["feed"] = "sip"
        for name, variable in FLAG_ENVIRONMENT.items():
            if self._environ.get(variable, "").strip().lower() in _TRUE:
                self[name] = 1
                self._from_environment[name] = variable

    def parseOptions(self, options=None) -> None:
        """Parse, turning any usage error into one line on stderr and exit status 1.

        (twistd would print the whole usage text before the error.)
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as problem:
            raise SystemExit("alpaca-proxy: %s" % (problem,)) from None

    def opt_version(self) -> None:
        """Print alpaca-proxy's version and exit."""
        print("alpaca-proxy %s" % (__version__,))
        raise SystemExit(0)

    def _source(self, name: str) -> str:
        """How the user set an option: ``--name`` or the environment variable."""
        return self._from_environment.get(name) or "--" + name

    def postOptions(self) -> None:
        for name, minimum in (("linger", 0.0), ("auth-timeout", 0.001), ("sim-rate", 0.001),
                              ("client-buffer", 65536), ("ping-interval", 1.0),
                              ("ping-timeout", 1.0), ("silence-timeout", 0.0),
                              ("max-clients", 0), ("max-symbols", 0),
                              ("max-request-symbols", 0), ("max-rate", 0.0),
                              ("health-grace", 0.0), ("max-clients-per-address", 0),
                              ("max-upstreams", 0), ("client-ping-interval", 0.0),
                              ("client-ping-timeout", 1.0), ("rest-rate", 1),
                              ("rest-queue-timeout", 0.0), ("rest-timeout", 0.1),
                              ("rest-cache-ms", 0.0)):
            self[name] = _number(self._source(name), self[name], minimum)
        for name in ("client-buffer", "max-clients", "max-symbols", "max-request-symbols",
                     "max-clients-per-address", "max-upstreams", "rest-rate"):
            self[name] = int(self[name])
        try:
            _check_listen(self["listen"])
        except usage.UsageError as problem:
            source = self._source("listen")
            raise usage.UsageError(str(problem).replace("--listen", source, 1)) from None
        self["polygon-url"] = POLYGON_CLUSTERS.get(self["polygon-url"], self["polygon-url"])
        for name in ("data-url", "trading-url", "polygon-url"):
            self[name] = _check_url(self._source(name), self[name])
        #: REST bases given explicitly (with --simulate, REST goes only where it is told).
        self["rest-explicit"] = bool(self["trading-rest-url"]) or (
            "data-rest-url" in self._from_environment or
            self["data-rest-url"] != "https://data.alpaca.markets")
        if not self["trading-rest-url"]:
            self["trading-rest-url"] = _https(self["trading-url"])
        for name in ("data-rest-url", "trading-rest-url"):
            self[name] = _check_url(self._source(name), self[name], ("http", "https"))
        if not re.fullmatch(r"[a-z_]+", self["feed"]):
            raise usage.UsageError("--feed: not a feed name: %r" % (self["feed"],))
        accounts: dict[str, Credentials] = {}
        pair = Credentials.from_environment(self._environ)
        if pair is not None:
            accounts[pair.key] = pair
        if self["credentials-file"]:
            accounts.update(_read_accounts(self["credentials-file"]))
        #: key -> Credentials clients must present; None: clients bring their own.
        self["accounts"] = accounts or None
        polygon_keys = {self._environ.get(name, "").strip()
                        for name in ("POLYGON_API_KEY", "MASSIVE_API_KEY")} - {""}
        keys = [credentials_for(key) for key in sorted(polygon_keys)]
        #: Polygon keys clients must present (by fingerprint); None: their own.
        self["polygon-accounts"] = {c.key: c for c in keys} or None
        self["origins"] = frozenset(o.strip() for o in self["allow-origin"].split(",")
                                    if o.strip())
        #: Host names HTTP requests may name; None: any (not listening on loopback only).
        self["hosts"] = None
        if _loopback_only(self["listen"]):
            self["hosts"] = frozenset(h.strip().lower() for h in self["allow-host"].split(",")
                                      if h.strip())
        self._recording_options()
        self._bus_options()
        self["trust-root"] = None
        if self["ca-bundle"]:
            try:
                self["trust-root"] = load_ca_bundle(self["ca-bundle"])
            except (OSError, ValueError) as problem:
                raise usage.UsageError("--ca-bundle: %s" % (problem,)) from None


    def _recording_options(self) -> None:
        """--record and --replay: checked, the recording opened (its first blocks read)."""
        self["replay-speed"] = _number(self._source("replay-speed"), self["replay-speed"], 0.0)
        if self["record"] and self["replay"]:
            raise usage.UsageError("%s and %s: a replay has no upstream to record; give one"
                                   % (self._source("record"), self._source("replay")))
        if self["replay"] and self["simulate"]:
            raise usage.UsageError("%s and %s both choose what stands in for Alpaca; give one"
                                   % (self._source("replay"), self._source("simulate")))
        if not self["replay"]:
            for name in ("replay-from", "replay-to", "replay-loop", "replay-shift"):
                if self[name]:
                    raise usage.UsageError("%s needs --replay" % (self._source(name),))
            if self._source("replay-speed") != "--replay-speed" or self["replay-speed"] != 1:
                raise usage.UsageError("%s needs --replay" % (self._source("replay-speed"),))
        self["record-keep-days"] = int(_number(self._source("record-keep-days"),
                                               self["record-keep-days"], 0))
        for name in ("record-trading", "record-keep-days"):
            if self[name] and not self["record"]:
                raise usage.UsageError("%s needs --record" % (self._source(name),))
        if self["record"]:
            self["record"] = _recording_directory(self._source("record"), self["record"])
        for name in ("replay-from", "replay-to"):
            if self[name]:
                self[name] = _instant(self._source(name), self[name])
        if self["replay-from"] and self["replay-to"] and self["replay-to"] <= self["replay-from"]:
            raise usage.UsageError("%s must come after %s" % (self._source("replay-to"),
                                                              self._source("replay-from")))
        self["replay-catalog"] = None
        if self["replay"]:
            try:
                self["replay-catalog"] = Catalog.open(self["replay"])
            except NotARecording as problem:
                raise usage.UsageError("%s: %s" % (self._source("replay"), problem)) from None


    def _bus_options(self) -> None:
        """--bus: URLs checked, accounts required; the other bus options need it."""
        self["lease-ttl"] = _number(self._source("lease-ttl"), self["lease-ttl"], 1.0)
        self["bus-replicas"] = int(_number(self._source("bus-replicas"), self["bus-replicas"], 1))
        if not self["bus"]:
            for name in ("bus-creds", "node-name", "bus-symbols"):
                if self[name]:
                    raise usage.UsageError("%s needs --bus" % (self._source(name),))
            self["bus-servers"] = None
            return
        servers = [s.strip() for s in self["bus"].split(",") if s.strip()]
        for server in servers:
            try:
                url = URL.from_text(server)
            except Exception:
                url = None
            if url is None or url.scheme not in ("nats", "tls") or not url.host:
                raise usage.UsageError("%s: not a nats:// or tls:// URL: %r"
                                       % (self._source("bus"), _without_password(server)))
        if not servers:
            raise usage.UsageError("%s: no server given" % (self._source("bus"),))
        self["bus-servers"] = servers
        if not self["accounts"] and not self["polygon-accounts"]:
            raise usage.UsageError(
                "%s needs configured accounts (APCA_API_KEY_ID/APCA_API_SECRET_KEY or"
                " --credentials-file): a client's own secret never travels on the bus"
                % (self._source("bus"),))
        if self["replay"]:
            raise usage.UsageError("%s and %s: a replay is local; give one"
                                   % (self._source("bus"), self._source("replay")))
        if self["bus-creds"] and not os.path.isfile(self["bus-creds"]):
            raise usage.UsageError("%s: no such file: %s" % (self._source("bus-creds"),
                                                              self["bus-creds"]))


def _without_password(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def _recording_directory(source: str, path: str) -> str:
    """The directory to record to, made if missing; it must take new files."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as problem:
        raise usage.UsageError("%s: cannot create %s: %s"
                               % (source, path, problem.strerror)) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise usage.UsageError("%s: cannot write to %s" % (source, path))
    return path


def _instant(source: str, text: str) -> int:
    """An RFC 3339 time (with its offset, or Z) as nanoseconds since the epoch."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise usage.UsageError("%s: not an RFC 3339 time with an offset (e.g."
                               " 2026-12-01T14:30:00Z): %r" % (source, text))
    whole = int(moment.timestamp())
    return whole * 1_000_000_000 + moment.microsecond * 1000


def _number(source: str, value: object, minimum: float) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise usage.UsageError("%s: not a number: %r" % (source, value)) from None
    if not number >= minimum:
        raise usage.UsageError("%s: must be at least %s" % (source, minimum))
    return number


def _check_listen(description: str) -> None:
    try:
        # Parsing needs no running reactor; nothing listens yet.
        serverFromString(None, description)
    except Exception as problem:
        raise usage.UsageError("--listen: bad endpoint %r: %s" % (description, problem)) from None
    port = re.match(r"(?:tcp6?|ssl):(\d+)", description)
    if port and not 0 <= int(port.group(1)) <= 65535:
        raise usage.UsageError("--listen: port %s is out of range (0-65535)" % (port.group(1),))


def _loopback_only(description: str) -> bool:
    """Whether a listen endpoint string binds only loopback addresses."""
    interface = re.search(r"(?:^|:)interface=([^:]+)", description.replace("\\:", "\0"))
    if interface is None:
        return False  # all interfaces, a unix socket or a systemd socket: no Host rule
    address = interface.group(1).replace("\0", ":").strip("[]").lower()
    return address == "localhost" or address == "::1" or address.startswith("127.")


def _https(stream_url: str) -> str:
    """The REST base of a stream URL: wss:// → https://, ws:// → http://."""
    return re.sub(r"^ws(s?)://", r"http\1://", stream_url)


def _check_url(source: str, value: str, schemes: tuple[str, str] = ("ws", "wss")) -> str:
    """A URL with one of two schemes and a host, without its trailing slash."""
    try:
        url = URL.from_text(value)
    except Exception:
        raise usage.UsageError("%s: not a URL: %r" % (source, value)) from None
    if url.scheme not in schemes or not url.host:
        raise usage.UsageError("%s: must be a %s:// or %s:// URL, got %r"
                               % ((source,) + schemes + (value,)))
    return value.rstrip("/")


def _read_accounts(path: str) -> dict[str, Credentials]:
    """``KEY:SECRET`` lines; blank lines and ``#`` comments are skipped."""
    try:
        with open(path, encoding="utf-8") as source:
            lines = source.read().splitlines()
    except OSError as problem:
        raise usage.UsageError("--credentials-file: %s" % (problem.strerror,)) from None
    accounts = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, colon, secret = line.partition(":")
        if not colon or not key.strip() or not secret.strip():
            # Never echo the line: it may hold a secret.
            raise usage.UsageError("--credentials-file: line %d is not KEY:SECRET" % (number,))
        accounts[key.strip()] = Credentials(key.strip(), secret.strip())
    return accounts
