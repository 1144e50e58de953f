"""Alpaca's trading stream upstream: one connection per account, every event to every listener.

The link authenticates and listens to ``trade_updates`` whatever the clients
want; the account counts as accepted only once upstream answers ``listening``
(a client told "authorized" earlier could miss the first events).  The
connection is kept through drops like the data streams'.  The session fans
each ``trade_updates`` event out to every client of the account listening to
it, as upstream sent it.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from alpaca_proxy import codec, fanout
from alpaca_proxy.credentials import Credentials
from alpaca_proxy.dialects import alpaca_trading
from alpaca_proxy.streams import Stream
from alpaca_proxy.upstream.link import IEventReceiver, WebSocketLink
from alpaca_proxy.upstream.session import Session


class TradingLink(WebSocketLink):
    """One account's upstream trading stream."""

    _authenticating = False

    def _on_open(self) -> None:
        # No welcome on this stream: the client speaks first.
        self._authenticating = True
        self.send(alpaca_trading.auth_request(self.credentials))

    def _on_closed(self) -> None:
        self._authenticating = False

    def send_change(self, action: str, keys: list[tuple[str, str]]) -> None:
        raise NotImplementedError("the trading stream is account-wide: nothing to subscribe")

    def _on_frame(self, payload: bytes, binary: bool) -> None:
        try:
            message = codec.decode(payload)
        except codec.DecodeError:
            if payload != b"\x01":  # an old 1-byte heartbeat
                self._log.warn("upstream {path} sent an undecodable frame",
                               path=self.stream.path)
            return
        if not isinstance(message, dict):
            return
        stream = message.get("stream")
        data = message.get("data") if isinstance(message.get("data"), dict) else {}
        if stream == "authorization" and self._authenticating:
            if data.get("status") == "authorized":
                self.send(alpaca_trading.listen_request())
            else:
                self._authenticating = False
                self._refused(402, "unauthorized")
        elif stream == "listening" and self._authenticating:
            if "trade_updates" in (data.get("streams") or ()):
                self._authenticating = False
                self._authenticated()
        elif stream in alpaca_trading.STREAMS:
            self.receiver.event(stream, message, payload, binary)
        elif stream != "listening":
            self._log.info("upstream {path}: unexpected message on stream {stream}",
                           path=self.stream.path, stream=stream)


@implementer(IEventReceiver)
class TradingSession(Session):
    """One account's trading stream and the local clients listening to it."""

    def __init__(self, stream: Stream, credentials: Credentials, clock: Any) -> None:
        super().__init__(stream, credentials, clock)
        #: client -> the streams it listens to
        self.listeners: dict[Any, tuple[str, ...]] = {}
        #: Told the account's key id on every event (the REST cache empties itself).
        self.on_event: Any = None
        #: Called when a client listens to a stream (a replay starts playing then).
        self.on_listen: Any = None

    @property
    def clients(self) -> list[Any]:
        return list(self.listeners)

    def subscriptions_of(self, client: Any) -> int:
        return len(self.listeners.get(client, ()))

    def attach(self, client: Any) -> None:
        self.listeners.setdefault(client, ())

    def detach(self, client: Any) -> None:
        self.listeners.pop(client, None)

    def request(self, client: Any, streams: tuple[str, ...]) -> None:
        """``listen``: the client's streams become ``streams``."""
        self.listeners[client] = streams
        if streams and self.on_listen is not None:
            self.on_listen()

    def state_of(self, client: Any) -> tuple[str, ...]:
        return self.listeners.get(client, ())

    def event(self, stream: str, message: dict, payload: bytes, binary: bool) -> None:
        """One event to every listener: upstream's own bytes, or MessagePack once."""
        self.bytes_in += len(payload)
        self.incoming.add(1, self.clock.seconds())
        if self.on_event is not None:
            self.on_event(self.credentials.key)
        listening = [client for client, streams in self.listeners.items() if stream in streams]
        messages, size = fanout.broadcast(listening, message, payload, binary)
        self.messages_out += messages
        self.bytes_out += size
