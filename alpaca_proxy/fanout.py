"""The one place that writes to clients.

The router decides who gets what, sessions decide when; every write to a
local client (``interfaces.IClient``) goes through a function here, so the
rules of delivery live in one module: each payload is encoded once per
(message subset, encoding) and prepared once for every client sharing it;
control messages (acks, refusals, notices) go one client at a time.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from alpaca_proxy import codec
from alpaca_proxy.subscriptions import State


def acknowledge(client: Any, state: State) -> None:
    """A client's oldest request is done; ``state`` is its whole state now."""
    client.acknowledge(state)


def refuse(client: Any, code: int) -> None:
    """A client's oldest request was refused; its state is unchanged."""
    client.refuse(code)


def notice(clients: Iterable[Any], message: dict) -> None:
    """A status message from upstream for every client of a session."""
    for client in list(clients):
        client.notice(message)


def account_refused(clients: Iterable[Any], code: int) -> None:
    """Upstream refused the account these clients share."""
    for client in list(clients):
        client.account_refused(code)


def deliver(elements: Sequence[codec.Element],
            audiences: Mapping[frozenset, list[int]]) -> tuple[int, int]:
    """A frame's data: each audience (a set of clients) gets the messages it wants.

    A client in several audiences gets the union of their messages, in upstream
    order, each once.  Clients wanting the same messages in the same encoding
    share one encoded, prepared frame.  Returns (messages, bytes) delivered.
    """
    if len(audiences) == 1:
        shares: Iterable[tuple[Sequence[int], Iterable[Any]]] = [
            (positions, members) for members, positions in audiences.items()]
    else:
        # A client in several audiences gets their positions gathered, then sorted
        # and made unique once (a wildcard client may be in every audience).
        wants: dict[Any, list[int]] = {}
        merged: set[Any] = set()
        for members, positions in audiences.items():
            for client in members:
                had = wants.get(client)
                if had is None:
                    wants[client] = positions
                elif client in merged:
                    had.extend(positions)
                else:
                    wants[client] = had + positions  # a copy: the audience's list is shared
                    merged.add(client)
        grouped: dict[tuple[int, ...], list[Any]] = {}
        for client, positions in wants.items():
            key = tuple(sorted(set(positions))) if client in merged else tuple(positions)
            grouped.setdefault(key, []).append(client)
        shares = grouped.items()
    messages = size = 0
    for positions, clients in shares:
        by_encoding: dict[codec.Encoding, list[Any]] = {}
        for client in clients:
            encoding = client.encoding
            if encoding is not None:  # None: another node (--bus), it has the frame
                by_encoding.setdefault(encoding, []).append(client)
        count = len(positions)
        subset = [elements[i] for i in positions]
        for encoding, receivers in by_encoding.items():
            for payload in encoding.frames(subset):
                prepared = receivers[0].prepare(payload, encoding.binary)
                for client in receivers:
                    client.send_prepared(prepared)
                size += len(payload) * len(receivers)
            for client in receivers:
                client.messages_sent += count
            messages += count * len(receivers)
    return messages, size


def snapshot(client: Any, elements: Sequence[codec.Element]) -> None:
    """Messages for one client alone (whole order books for a late joiner)."""
    if client.encoding is None:
        client.keep_books([element.raw for element in elements])  # another node (--bus)
        return
    for payload in client.encoding.frames(elements):
        client.send_prepared(client.prepare(payload, client.encoding.binary))


def broadcast(clients: Iterable[Any], message: dict, payload: bytes,
              binary: bool) -> tuple[int, int]:
    """One upstream event (a single object, not an array) to each client.

    JSON clients get upstream's own bytes and frame type when upstream sent
    JSON; any other case is encoded once per encoding.  Returns (messages, bytes).
    """
    prepared: dict[codec.Encoding, Any] = {}
    messages = size = 0
    upstream_json = payload.lstrip()[:1] in (b"{", b"[")
    for client in list(clients):
        encoding = client.encoding
        if encoding not in prepared:
            if encoding is codec.JSON and upstream_json:
                prepared[encoding] = client.prepare(payload, binary)
            else:
                prepared[encoding] = client.prepare(encoding.encode(message), encoding.binary)
        client.send_prepared(prepared[encoding])
        client.messages_sent += 1
        messages += 1
        size += len(prepared[encoding].payload)
    return messages, size
