"""Alpaca's trading stream (``/stream``) for local clients.

Each client authenticates (either form), ``listen`` replaces its set of streams
and is answered with ``listening``, and every ``trade_updates`` event of the
account reaches every client listening to it, as upstream sent it (same bytes
and frame type for JSON clients).  Messages are single objects, in binary
frames as Alpaca's paper server sends them.
"""

from __future__ import annotations

from typing import Any

from alpaca_proxy import streams
from alpaca_proxy.dialects import alpaca_trading
from alpaca_proxy.downstream.client import ClientProtocol
from alpaca_proxy.logs import short


class TradingProtocol(ClientProtocol):
    """A local trading-stream client."""

    def _resolve(self, path: str) -> streams.Stream | None:
        return streams.resolve_trading(path)

    def send_message(self, message: dict) -> None:
        # Single objects, in binary frames as paper does (JSON); every SDK copes.
        self.send_payload(self.encoding.encode(message), True)

    def _request(self, message: Any) -> None:
        try:
            request = alpaca_trading.parse(message)
        except alpaca_trading.TradingError as problem:
            self._undecodable(str(problem))
            return
        if isinstance(request, alpaca_trading.TradingAuth):
            if self.session is not None:
                self.send_message(alpaca_trading.authorization(True))
            else:
                self._authenticate(request.credentials)
        elif self.session is None:
            self.send_message(alpaca_trading.authorization(False, "listen"))
        else:
            self.session.request(self, request.streams)
            self._log.info("client {peer} listens to {streams}", peer=self.peer_name,
                           streams=list(request.streams))
            self.send_message(alpaca_trading.listening(request.streams))

    def _undecodable(self, why: str) -> None:
        self.factory.proxy.notes.warn("bad-input", "client {peer} on {path}: bad input ({why})",
                                      peer=self.peer_name, path=self.stream.path, why=short(why))
        self.send_message(alpaca_trading.error("invalid syntax"))

    def _auth_accepted(self) -> None:
        self.send_message(alpaca_trading.authorization(True))

    def _auth_refused(self, code: int, detail: str = "") -> None:
        self.send_message(alpaca_trading.authorization(False, message=detail))

    def _deadline_passed(self) -> None:
        self.send_message(alpaca_trading.authorization(False))

    # -- IClient -----------------------------------------------------------------------

    def acknowledge(self, state: Any) -> None:
        raise NotImplementedError("the trading stream answers listen at once")

    refuse = acknowledge
