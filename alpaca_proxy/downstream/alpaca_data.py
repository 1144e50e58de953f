"""Alpaca's market-data protocol for local clients.

What a client sees (the local wire protocol):

- Upgrade on any path ``streams.resolve`` knows (query strings and doubled
  slashes are fine); any other path is refused with HTTP 404.  The upgrade's
  ``Content-Type: application/msgpack`` selects MessagePack in binary frames,
  anything else JSON in text frames.  Client payloads are decoded by content,
  whatever their frame type, and may be fragmented.
- ``[{"T":"success","msg":"connected"}]`` comes first, even if the client's
  ``auth`` was already on its way.  Credentials come by ``auth`` message, or on
  the upgrade as ``APCA-API-KEY-ID``/``APCA-API-SECRET-KEY`` or HTTP Basic.
  Answers: ``authenticated``, or errors 402 (wrong pair), 403 (again), 404 (no
  auth within the deadline; the socket is then closed), 401 (subscribing first);
  upstream's 409/411 are passed on.  Options endpoints speak MessagePack only:
  without a ``Content-Type`` a client gets MessagePack, and one that asks for
  JSON gets 412 after the welcome and in reply to every request.  Messages that arrive while the verdict is
  pending are answered after it, in order.
- ``subscribe``/``unsubscribe`` add to / remove from the client's own state;
  each is answered by one ``subscription`` message listing that whole state,
  before any data it unlocks.  400/405/410/413 refuse a request and leave the
  state as it was.
- Data frames are arrays of the upstream messages the client's state matches,
  in upstream order, each at most once, at most 1 MiB per frame.
"""

from __future__ import annotations

from typing import Any

from alpaca_proxy import codec, streams
from alpaca_proxy.dialects.alpaca_data import (
    AUTHENTICATED, DIALECTS, WELCOME, Auth, ProtocolError, error,
)
from alpaca_proxy.downstream.client import ClientProtocol
from alpaca_proxy.logs import short


class AlpacaDataProtocol(ClientProtocol):
    """A market-data client speaking Alpaca's data protocol."""

    _msgpack_only_refusal = False

    def _resolve(self, path: str) -> streams.Stream | None:
        return streams.resolve(path, self.factory.proxy.default_feed)

    def onConnect(self, request):
        super().onConnect(request)
        self.dialect = DIALECTS[self.stream.kind]
        # Options data exists only as MessagePack: no Content-Type means MessagePack
        # (the C# client sends none), an explicit JSON request gets 412.
        if self.stream.kind == streams.OPTIONS and self.encoding is codec.JSON:
            if self.content_type and "json" in self.content_type.lower():
                self._msgpack_only_refusal = True
            else:
                self.encoding = codec.MSGPACK
        return None

    def _opened(self) -> None:
        self.send_control(WELCOME)
        if self._msgpack_only_refusal:
            self.send_control(error(412))

    def _request(self, message: Any) -> None:
        if self._msgpack_only_refusal:
            self._bad_input(412, "JSON asked for on a MessagePack-only endpoint")
            return
        try:
            request = self.dialect.parse(message)
        except ProtocolError as refused:
            self._bad_input(refused.code, "refused request")
            return
        if isinstance(request, Auth):
            if self.session is not None:
                self.send_control(error(403))
            else:
                self._authenticate(request.credentials)
        elif self.session is None:
            self.send_control(error(401))
        elif not self._within_limits(request):
            self._bad_input(405, "over the proxy's symbol limits")
        else:
            self.session.request(self, request)

    def _undecodable(self, why: str) -> None:
        self._bad_input(400, why)

    def _bad_input(self, code: int, why: str) -> None:
        self.factory.proxy.notes.warn("bad-input", "client {peer} on {path}: {code} ({why})",
                                      peer=self.peer_name, path=self.stream.path, code=code,
                                      why=short(why))
        self.send_control(error(code))

    def _auth_accepted(self) -> None:
        self.send_control(AUTHENTICATED)

    def _auth_refused(self, code: int, detail: str = "") -> None:
        self.send_control(error(code, detail))

    def _deadline_passed(self) -> None:
        self.send_control(error(404))

    def _slow(self) -> None:
        self.sendMessage(self.encoding.control(error(407)), self.encoding.binary)

    # -- IClient ---------------------------------------------------------------------

    def send_control(self, message: dict) -> None:
        if message["T"] == "error":
            self.factory.proxy.stats.errors[message["code"]] += 1
        self.send_payload(self.encoding.control(message), self.encoding.binary)

    def acknowledge(self, state) -> None:
        """The router confirmed a state: send the full ``subscription`` ack."""
        self.send_control(self.dialect.ack(state))

    def refuse(self, code: int) -> None:
        """The router refused a request (an upstream error): pass it on."""
        self._log.info("client {peer} on {path}: request refused upstream with {code}",
                       peer=self.peer_name, path=self.stream.path, code=code)
        self.send_control(error(code))
