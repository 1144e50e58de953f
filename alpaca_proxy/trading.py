"""The trading stream (``/stream``): one upstream per account, every event to every listener.

Upstream, the proxy authenticates and listens to ``trade_updates`` whatever its
clients want; the account counts as verified once upstream answers
``listening``.  The connection is kept through drops like the data streams'.
Locally, each client authenticates (either form), ``listen`` replaces its set
of streams and is answered with ``listening``, and every ``trade_updates``
event goes to every client of that account listening to it, as upstream sent
it (same bytes and frame type for JSON clients).
"""

from __future__ import annotations

from typing import Any

from alpaca_proxy import codec, paths
from alpaca_proxy.dialects import alpaca_trading as trading
from alpaca_proxy.downstream import ClientProtocol
from alpaca_proxy.upstream import BaseUpstreamSession, Health

TRADING = "trading"
TRADING_ENDPOINT = paths.Endpoint(TRADING, "/stream")
#: Local paths of the trading stream (alpaca-trade-api dials ``/stream/``).
TRADING_PATHS = frozenset({"/stream"})


def is_trading_path(raw_path: str) -> bool:
    return paths.normalize(raw_path) in TRADING_PATHS


class TradingSession(BaseUpstreamSession):
    """One account's upstream trading stream and the local clients listening to it."""

    def __init__(self, endpoint: paths.Endpoint, credentials: Any, clock: Any,
                 rng: Any = None, health: Health = Health()) -> None:
        super().__init__(endpoint, credentials, clock, rng, health)
        #: client -> the streams it listens to
        self.listeners: dict[Any, tuple[str, ...]] = {}

    def encode(self, message: dict) -> tuple[bytes, bool]:
        return codec.to_json(message), False

    @property
    def idle(self) -> bool:
        return not self.listeners

    @property
    def clients(self) -> list[Any]:
        return list(self.listeners)

    @property
    def subscription_count(self) -> int:
        return 0  # no channel/symbol pairs: the stream is account-wide

    def subscriptions_of(self, client: Any) -> int:
        return len(self.listeners.get(client, ()))

    def attach(self, client: Any) -> None:
        self.listeners.setdefault(client, ())

    def detach(self, client: Any) -> None:
        self.listeners.pop(client, None)

    def listen(self, client: Any, streams: tuple[str, ...]) -> None:
        self.listeners[client] = streams

    def _on_connected(self) -> None:
        # No welcome on this stream: the client speaks first.
        self.state = "authenticating"
        self._send(trading.auth_request(self.credentials))

    def received(self, payload: bytes, binary: bool) -> None:
        try:
            message = codec.decode(payload)
        except codec.DecodeError:
            if payload != b"\x01":  # an old 1-byte heartbeat
                self._log.warn("upstream {path} sent an undecodable frame",
                               path=self.endpoint.path)
            return
        if not isinstance(message, dict):
            return
        stream = message.get("stream")
        data = message.get("data") if isinstance(message.get("data"), dict) else {}
        if stream == "authorization" and self.state == "authenticating":
            if data.get("status") == "authorized":
                self._send(trading.listen_request())
            else:
                self._refused(402)
        elif stream == "listening" and self.state == "authenticating":
            # Ready only once upstream streams the events: a client told
            # "authorized" earlier could miss the first ones.
            if "trade_updates" in (data.get("streams") or ()):
                self._authenticated()
        elif stream in trading.STREAMS:
            self.publish(stream, message, payload, binary)
        elif stream != "listening":
            self._log.info("upstream {path}: unexpected message on stream {stream}",
                           path=self.endpoint.path, stream=stream)

    def publish(self, stream: str, message: dict, payload: bytes, binary: bool) -> None:
        """Send one event to every listener: upstream's own bytes, or MessagePack once."""
        self.bytes_in += len(payload)
        self.incoming.add(1, self.clock.seconds())
        prepared: dict[codec.Encoding, Any] = {}
        for client, streams in list(self.listeners.items()):
            if stream not in streams:
                continue
            encoding = client.encoding
            if encoding not in prepared:
                if encoding is codec.JSON and not _is_msgpack(payload):
                    prepared[encoding] = client.prepare(payload, binary)
                else:
                    prepared[encoding] = client.prepare(encoding.encode(message), encoding.binary)
            client.send_prepared(prepared[encoding])
            client.messages_sent += 1
            self.messages_out += 1
            self.bytes_out += len(prepared[encoding].payload)


def _is_msgpack(payload: bytes) -> bool:
    return payload.lstrip()[:1] not in (b"{", b"[")


class TradingProtocol(ClientProtocol):
    """A local trading-stream client."""

    def _resolve(self, path: str) -> paths.Endpoint | None:
        return TRADING_ENDPOINT if is_trading_path(path) else None

    def send_message(self, message: dict) -> None:
        # Single objects, in binary frames as paper does (JSON); every SDK copes.
        self.send_payload(self.encoding.encode(message), True)

    def _request(self, message: Any) -> None:
        try:
            request = trading.parse(message)
        except trading.TradingError as problem:
            self._undecodable(str(problem))
            return
        if isinstance(request, trading.TradingAuth):
            if self.session is not None:
                self.send_message(trading.authorization(True))
            else:
                self._authenticate(request.credentials)
        elif self.session is None:
            self.send_message(trading.authorization(False, "listen"))
        else:
            self.session.listen(self, request.streams)
            self._log.info("client {peer} listens to {streams}", peer=self.peer_name,
                           streams=list(request.streams))
            self.send_message(trading.listening(request.streams))

    def _undecodable(self, why: str) -> None:
        self._log.info("client {peer} on {path}: bad input ({why})", peer=self.peer_name,
                       path=self.endpoint.path, why=why)
        self.send_message(trading.error("invalid syntax"))

    def _auth_accepted(self) -> None:
        self.send_message(trading.authorization(True))

    def _auth_refused(self, code: int) -> None:
        self.send_message(trading.authorization(False))

    def _deadline_passed(self) -> None:
        self.send_message(trading.authorization(False))
