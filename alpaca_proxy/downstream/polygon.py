"""Polygon's (Massive's) websocket protocol for local clients.

A client sees Polygon's own protocol: ``connected`` first,
``auth_success``/``auth_failed``/``auth_timeout``, one ``subscribed to: X``
status per parameter before any data it unlocks, JSON text frames only.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from alpaca_proxy import codec, streams
from alpaca_proxy.dialects import polygon
from alpaca_proxy.downstream.client import ClientProtocol
from alpaca_proxy.logs import short


class PolygonProtocol(ClientProtocol):
    """A local client speaking Polygon's protocol."""

    encoding = codec.JSON

    def _resolve(self, path: str) -> streams.Stream | None:
        return streams.resolve_polygon(path, self.factory.proxy.polygon_root)

    def onConnect(self, request):
        super().onConnect(request)
        self.encoding = codec.JSON  # Polygon speaks JSON only
        self._header_credentials = None  # the key comes by message only
        #: (action, parameters) of each request the router has not answered yet.
        self._asked: deque[tuple[str, tuple[str, ...]]] = deque()
        return None

    def send_status(self, *messages: dict) -> None:
        self.send_payload(codec.to_json(list(messages)), False)

    def _opened(self) -> None:
        self.send_status(polygon.CONNECTED)

    def _request(self, message: Any) -> None:
        try:
            request = polygon.parse(message)
        except polygon.PolygonError as refused:
            self.factory.proxy.notes.warn("bad-input", "client {peer} on {path}: {reply}",
                                          peer=self.peer_name, path=self.stream.path,
                                          reply=refused.reply["message"])
            self.send_status(refused.reply)
            return
        if isinstance(request, polygon.PolygonAuth):
            if self.session is None:
                self._authenticate(request.credentials)
            elif self.session.credentials.matches(request.credentials):
                self.send_status(polygon.AUTH_SUCCESS)
            else:
                self.send_status(polygon.AUTH_FAILED)
        elif self.session is None:
            self.send_status(polygon.NOT_AUTHORIZED)
        elif not self._within_limits(request.change):
            self._log.info("client {peer} on {path}: over the proxy's symbol limits",
                           peer=self.peer_name, path=self.stream.path)
            self.send_status(polygon.status("error", "subscription limit exceeded"))
        else:
            self._asked.append((request.change.action, request.params))
            self.session.request(self, request.change)

    def _undecodable(self, why: str) -> None:
        self.factory.proxy.notes.warn("bad-input", "client {peer} on {path}: {why}",
                                      peer=self.peer_name, path=self.stream.path, why=short(why))
        self.send_status(polygon.INVALID_MESSAGE)

    def _auth_accepted(self) -> None:
        self.send_status(polygon.AUTH_SUCCESS)

    def _auth_refused(self, code: int, detail: str = "") -> None:
        self.send_status(polygon.status("error", detail) if detail else polygon.AUTH_FAILED)

    def _deadline_passed(self) -> None:
        self.send_status(polygon.AUTH_TIMEOUT)

    def _slow(self) -> None:
        self.sendMessage(codec.to_json([polygon.SLOW_CONSUMER]), False)

    # -- IClient -------------------------------------------------------------------------

    def notice(self, message: dict) -> None:
        """An upstream error status (plan restrictions and the like), as Polygon sends it."""
        self.send_status(message)

    def acknowledge(self, state: Any) -> None:
        """The router confirmed this client's oldest request: one status per parameter."""
        action, params = self._asked.popleft()
        if params:
            self.send_status(*polygon.acknowledgements(action, params))

    def refuse(self, code: int) -> None:
        action, params = self._asked.popleft()
        self._log.info("client {peer} on {path}: request refused upstream ({code})",
                       peer=self.peer_name, path=self.stream.path, code=code)
        self.send_status(polygon.status("error", "%s refused: %s" % (action, ",".join(params))))
