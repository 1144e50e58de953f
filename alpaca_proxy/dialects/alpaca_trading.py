"""Alpaca's trading stream (``/stream``): account-wide order updates, as pure translation.

Messages are single objects, not arrays.  Two auth forms exist: the current
``{"action":"auth","key","secret"}`` and the legacy
``{"action":"authenticate","data":{"key_id","secret_key"}}`` that alpaca-py 0.44,
alpaca-trade-api, the JS and C# SDKs send.  ``listen`` replaces the client's set
of streams; only ``trade_updates`` exists.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from attrs import frozen

from alpaca_proxy.credentials import Credentials

STREAMS = ("trade_updates",)


class TradingError(Exception):
    """A client message the trading stream cannot take."""


@frozen
class TradingAuth:
    credentials: Credentials


@frozen
class Listen:
    streams: tuple[str, ...]


def parse(message: Any) -> TradingAuth | Listen:
    """One decoded client message as a request; TradingError if malformed."""
    if not isinstance(message, dict):
        raise TradingError("invalid syntax")
    action = message.get("action")
    data = message.get("data")
    if action == "auth":
        key, secret = message.get("key"), message.get("secret")
    elif action == "authenticate" and isinstance(data, dict):
        key, secret = data.get("key_id"), data.get("secret_key")
    elif action == "listen" and isinstance(data, dict):
        streams = data.get("streams")
        if not isinstance(streams, list) or not all(isinstance(s, str) for s in streams):
            raise TradingError("invalid syntax")
        return Listen(tuple(s for s in dict.fromkeys(streams) if s in STREAMS))
    else:
        raise TradingError("invalid syntax")
    if not isinstance(key, str) or not isinstance(secret, str):
        raise TradingError("invalid syntax")
    return TradingAuth(Credentials(key, secret))


def authorization(authorized: bool, action: str = "authenticate",
                  message: str = "") -> dict[str, Any]:
    """The ``authorization`` reply (live servers add a message when refusing)."""
    data: dict[str, Any] = {"status": "authorized" if authorized else "unauthorized",
                            "action": action}
    if not authorized and action == "authenticate":
        data["message"] = message or "access key verification failed"
    return {"stream": "authorization", "data": data}


def listening(streams: tuple[str, ...]) -> dict[str, Any]:
    return {"stream": "listening", "data": {"streams": list(streams)}}


def error(text: str) -> dict[str, Any]:
    """Reply to input the stream cannot parse (Alpaca's own shape is undocumented)."""
    return {"stream": "error", "data": {"error_message": text}}


def auth_request(credentials: Credentials) -> dict[str, Any]:
    """How the proxy authenticates upstream (the current documented form)."""
    return {"action": "auth", "key": credentials.key, "secret": credentials.secret}


def listen_request(streams: tuple[str, ...] = STREAMS) -> dict[str, Any]:
    return {"action": "listen", "data": {"streams": list(streams)}}


def shifted(message: dict[str, Any], nanoseconds: int) -> dict[str, Any]:
    """A ``trade_updates`` event with its times moved by ``nanoseconds``: the event's
    ``timestamp`` and the order's ``*_at`` fields (RFC 3339 text)."""
    data = message.get("data")
    if not isinstance(data, dict):
        return message
    moved = {key: _moved_text(value, nanoseconds) if key == "timestamp" else value
             for key, value in data.items()}
    order = data.get("order")
    if isinstance(order, dict):
        moved["order"] = {key: _moved_text(value, nanoseconds) if key.endswith("_at") else value
                          for key, value in order.items()}
    return {**message, "data": moved}


def _moved_text(value: Any, nanoseconds: int) -> Any:
    """An RFC 3339 time moved (to microseconds); anything else as it was."""
    if not isinstance(value, str) or len(value) < 20:
        return value
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is None:
        return value
    moved = (moment + timedelta(microseconds=nanoseconds // 1000)).astimezone(timezone.utc)
    return moved.isoformat().replace("+00:00", "Z")
