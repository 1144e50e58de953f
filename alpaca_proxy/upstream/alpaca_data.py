"""The link to one of Alpaca's market-data streams.

Asks for MessagePack, so timestamps arrive as ext -1 and pass through to
MessagePack clients byte for byte.  Waits for the welcome, authenticates by
message, and after a 406 (the slot is still held by a connection upstream has
not reaped yet) re-sends ``auth`` on the same socket, as Alpaca's Go SDK does,
instead of dialling again.  Each ``subscription`` ack answers the oldest change;
request errors (400, 405, 410, 412, 413) refuse it.
"""

from __future__ import annotations

from typing import Any

from alpaca_proxy import codec
from alpaca_proxy.dialects.alpaca_data import ERRORS, AlpacaDataDialect
from alpaca_proxy.upstream.link import DataLink

#: Upstream errors that answer one of our (un)subscribe requests.
REQUEST_ERRORS = frozenset({400, 405, 410, 412, 413})
#: Upstream errors at auth that no retry will mend: tell clients, stop dialling.
FATAL_AUTH_ERRORS = frozenset({402, 408, 409, 411, 412})


#: Message types of the protocol itself (welcome, auth, acks, errors), not data.
_CONTROL = frozenset(("success", "error", "subscription"))

class AlpacaDataLink(DataLink):
    """One account on one of Alpaca's market-data endpoints."""

    upgrade_headers = {"Content-Type": "application/msgpack"}

    def __init__(self, *args: Any, dialect: AlpacaDataDialect, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dialect = dialect
        self._authenticating = False
        self._auth_attempts = 0
        self._auth_retry: Any = None

    def encode(self, message: dict) -> tuple[bytes, bool]:
        return codec.to_msgpack(message), True

    def send_change(self, action: str, keys: list[tuple[str, str]]) -> None:
        self.send(self.dialect.request(action, keys))

    def _on_open(self) -> None:
        self._auth_attempts = 0

    def _on_closed(self) -> None:
        self._authenticating = False
        if self._auth_retry is not None and self._auth_retry.active():
            self._auth_retry.cancel()
        self._auth_retry = None

    @staticmethod
    def split(payload: bytes) -> list[codec.Element]:
        return codec.split_frame(payload)

    @staticmethod
    def is_control(element: codec.Element) -> bool:
        return element.kind in _CONTROL

    @classmethod
    def control_of(cls, elements: list[codec.Element]) -> list[codec.Element]:
        return [element for element in elements if element.kind in _CONTROL]

    def _control(self, message: dict) -> None:
        kind = message.get("T")
        if kind == "success" and message.get("msg") == "connected":
            self._send_auth()
        elif kind == "success" and message.get("msg") == "authenticated":
            self._authenticating = False
            self._authenticated()
        elif kind == "subscription":
            self.receiver.acked(self.dialect.acked_keys(message))
        elif kind == "error":
            self._error(message.get("code"), message.get("msg"))

    def _send_auth(self) -> None:
        self._auth_retry = None
        if not self.connected:
            return
        self._authenticating = True
        self._auth_attempts += 1
        self.send({"action": "auth", "key": self.credentials.key,
                   "secret": self.credentials.secret})

    def _error(self, code: Any, text: Any) -> None:
        if self.ready and code in REQUEST_ERRORS:
            self.receiver.request_refused(code)
            return
        if self._authenticating and code == 406:
            delay = min(5.0, 0.5 * self._auth_attempts)
            self._auth_retry = self.clock.callLater(delay, self._send_auth)
            self._log.warn(
                "upstream {path}: connection limit exceeded (406); the old connection is still"
                " held upstream, re-sending auth in {delay}s", path=self.stream.path,
                delay=delay, code=code)
            return
        if self._authenticating and code in FATAL_AUTH_ERRORS:
            self._authenticating = False
            self._refused(code, ERRORS.get(code, ""))
            return
        self._log.warn("upstream {path} error {code} {text}", path=self.stream.path,
                       code=code, text=text)
