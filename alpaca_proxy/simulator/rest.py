"""A fake of Alpaca's REST APIs (trading and market data), for the tests.

Written from the protocol notes, sharing no code with the proxy: accounts (401
otherwise), a rate limit of ``limit`` requests per ``window`` seconds with
Alpaca's ``X-Ratelimit-*`` headers (epoch seconds on the given clock) and 429
past it, a few trading and data endpoints, and switches: ``hold`` keeps requests
of a method unanswered (an order whose outcome the client cannot know).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET


class FakeRest(Resource):
    """Every path of both REST hosts on one resource."""

    isLeaf = True

    def __init__(self, clock: Any, accounts: dict[str, str] | None = None, limit: int = 200,
                 window: float = 60.0) -> None:
        super().__init__()
        self.clock = clock
        self.accounts = accounts
        self.limit = limit
        self.window = window
        #: Every request: (method, path with query, headers as a dict, body).
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        #: Methods whose requests are kept unanswered.
        self.hold: set[str] = set()
        self.held: list[Any] = []
        #: Requests answered 429 (past the limit).
        self.rejected = 0
        self._window_start = clock.seconds()
        self._used = 0
        self._ids = itertools.count(1)
        self.orders: dict[str, dict] = {}

    def render(self, request: Any) -> Any:
        method = request.method.decode()
        path = request.uri.decode()
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        body = request.content.read() if request.content is not None else b""
        self.requests.append((method, path, headers, body))
        key, secret = headers.get("apca-api-key-id"), headers.get("apca-api-secret-key")
        if self.accounts is not None and self.accounts.get(key or "") != secret:
            return self._json(request, 401, {"code": 40110000,
                                             "message": "request is not authorized"})
        now = self.clock.seconds()
        if now >= self._window_start + self.window:
            self._window_start, self._used = now, 0
        self._used += 1
        request.setHeader(b"x-ratelimit-limit", str(self.limit).encode())
        request.setHeader(b"x-ratelimit-remaining", str(max(0, self.limit - self._used)).encode())
        request.setHeader(b"x-ratelimit-reset", str(int(self._window_start + self.window)).encode())
        if self._used > self.limit:
            self.rejected += 1
            return self._json(request, 429, {"code": 42910000, "message": "rate limit exceeded"})
        if method in self.hold:
            self.held.append((request, method, path, body))
            return NOT_DONE_YET
        return self._json(request, *self._route(method, path, body))

    def release(self) -> None:
        """Answer every held request now, as if upstream had been slow."""
        held, self.held = self.held, []
        for request, method, path, body in held:
            request.write(self._json(request, *self._route(method, path, body)))
            request.finish()

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        bare = path.split("?", 1)[0]
        if bare == "/v2/account":
            return 200, {"id": _uuid(0), "account_number": "PA1", "status": "ACTIVE",
                         "currency": "USD", "cash": "100000", "buying_power": "200000",
                         "equity": "100000", "portfolio_value": "100000",
                         "pattern_day_trader": False, "trading_blocked": False}
        if bare == "/v2/clock":
            return 200, {"timestamp": "2024-05-02T10:03:07-04:00", "is_open": True,
                         "next_open": "2024-05-03T09:30:00-04:00",
                         "next_close": "2024-05-02T16:00:00-04:00"}
        if bare == "/v2/assets":
            return 200, [{"id": _uuid(1), "class": "us_equity", "exchange": "NASDAQ",
                          "symbol": "AAPL", "name": "Apple", "status": "active",
                          "tradable": True, "marginable": True, "shortable": True,
                          "easy_to_borrow": True, "fractionable": True}]
        if bare == "/v2/positions":
            return 200, []
        if bare == "/v2/orders" and method == "POST":
            order = _order(json.loads(body or b"{}"), _uuid(1000 + next(self._ids)))
            self.orders[order["id"]] = order
            return 200, order
        if bare == "/v2/orders" and method == "GET":
            return 200, list(self.orders.values())
        if bare == "/v2/orders:by_client_order_id":
            wanted = path.split("client_order_id=", 1)[-1]
            found = [o for o in self.orders.values() if o["client_order_id"] == wanted]
            return (200, found[0]) if found else (404, {"code": 40410000,
                                                        "message": "order not found"})
        if bare.startswith("/v2/orders/") and method == "DELETE":
            return 204, None
        if bare == "/v2/stocks/bars":
            symbols = path.split("symbols=", 1)[-1].split("&", 1)[0].replace("%2C", ",")
            return 200, {"next_page_token": None, "bars": {
                symbol: [_bar()] for symbol in symbols.split(",") if symbol}}
        if bare.startswith("/v2/stocks/") and bare.endswith("/bars"):
            symbol = bare.split("/")[3]
            return 200, {"symbol": symbol, "next_page_token": None, "bars": [_bar()]}
        return 404, {"code": 40410000, "message": "endpoint not found"}

    def _json(self, request: Any, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        if body is None:
            return b""
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()


def _uuid(number: int) -> str:
    """Alpaca's ids are UUIDs (alpaca-py checks)."""
    return "00000000-0000-4000-8000-%012d" % (number,)


def _bar() -> dict:
    return {"t": "2024-05-02T14:00:00Z", "o": 10.0, "h": 11.0, "l": 9.5, "c": 10.5,
            "v": 1200, "n": 12, "vw": 10.3}


def _order(asked: dict, order_id: str) -> dict:
    return {
        "id": order_id, "client_order_id": asked.get("client_order_id") or order_id,
        "created_at": "2024-05-02T14:03:07.551Z", "updated_at": "2024-05-02T14:03:07.551Z",
        "submitted_at": "2024-05-02T14:03:07.551Z", "asset_id": _uuid(1),
        "symbol": asked.get("symbol"), "asset_class": "us_equity",
        "qty": str(asked.get("qty", "1")), "filled_qty": "0", "order_class": "simple",
        "order_type": asked.get("type", "market"), "type": asked.get("type", "market"),
        "side": asked.get("side", "buy"), "time_in_force": asked.get("time_in_force", "day"),
        "status": "accepted", "extended_hours": False,
    }
