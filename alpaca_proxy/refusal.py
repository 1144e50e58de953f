"""Why the proxy, or upstream, refused an account or a request.

Alpaca's numeric error codes are the proxy's internal vocabulary for every
refusal (402 wrong credentials, 405 over a limit, 409 feed not in the plan ...),
whatever the provider: each downstream protocol renders a refusal its own way
(Alpaca's ``error`` message, Polygon's ``auth_failed`` status, the trading
stream's ``unauthorized``).
"""

from __future__ import annotations

#: Wrong credentials.
AUTH_FAILED = 402
#: A request over a symbol limit.
SYMBOL_LIMIT = 405
#: No room for another upstream connection.
CONNECTION_LIMIT = 406
#: Something broke inside the proxy.
INTERNAL = 500


class Refused(Exception):
    """An account or a request refused, with the code that says why (and, for a
    fault rather than a verdict, what went wrong, to tell the client)."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail
