"""The proxy's neutral vocabulary for subscriptions, whatever the provider.

A *key* is a (channel, symbol) pair: Alpaca's ("trades", "AAPL") and Polygon's
("T", "AAPL") alike, with ``*`` as the wildcard symbol.  A *state* is what one
client holds; a ``Change`` is one (un)subscribe request.  Dialects translate
their wire messages into these, the router keeps books in them.
"""

from __future__ import annotations

from typing import Mapping

from attrs import field, frozen

WILDCARD = "*"

#: A (channel, symbol) pair.
Key = tuple[str, str]

#: A state: channel -> ordered set of symbols (a dict, for insertion order).
State = dict[str, dict[str, None]]


@frozen
class Change:
    """A ``subscribe`` or ``unsubscribe`` request: channel -> symbols."""

    action: str
    channels: Mapping[str, tuple[str, ...]] = field(factory=dict)

    @property
    def size(self) -> int:
        """How many symbols the request names, over all channels."""
        return sum(len(symbols) for symbols in self.channels.values())


def keys_of(state: State) -> set[Key]:
    """Every (channel, symbol) pair of a state."""
    return {(channel, symbol) for channel, symbols in state.items() for symbol in symbols}


def applied(state: State, change: Change) -> State:
    """A new state: ``subscribe`` adds the change's symbols, ``unsubscribe`` removes them."""
    result = {channel: dict(symbols) for channel, symbols in state.items()}
    for channel, symbols in change.channels.items():
        current = result.setdefault(channel, {})
        if change.action == "subscribe":
            current.update(dict.fromkeys(symbols))
        else:
            for symbol in symbols:
                current.pop(symbol, None)
    return {channel: symbols for channel, symbols in result.items() if symbols}
