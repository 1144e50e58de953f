"""Crypto order books kept from upstream's ``o`` messages.

A client that subscribes to a book upstream already streams must first get the
whole book (``r: true``), as it would from Alpaca; upstream will not send one
again, so the proxy keeps every subscribed book and builds the snapshot itself.
"""

from __future__ import annotations

from typing import Any, Mapping


class OrderBooks:
    """Price levels per symbol: bids and asks, price -> size."""

    def __init__(self) -> None:
        self._books: dict[str, dict[str, Any]] = {}

    def apply(self, message: Mapping[str, Any]) -> None:
        """Fold one ``o`` message in: ``r`` replaces the book, size 0 deletes a level;
        updates to a book not yet seen whole are left out."""
        symbol = message.get("S")
        if not isinstance(symbol, str):
            return
        book = self._books.get(symbol)
        if message.get("r"):
            book = self._books[symbol] = {"b": {}, "a": {}, "t": None}
        elif book is None:
            # Updates to a book never seen whole (a replay from the middle of a
            # recording): a snapshot of them would claim a whole book that is not.
            return
        for side in ("b", "a"):
            for level in message.get(side) or ():
                if not isinstance(level, Mapping):
                    continue
                price, size = level.get("p"), level.get("s")
                if not isinstance(price, (int, float)) or not isinstance(size, (int, float)):
                    continue
                if size == 0:
                    book[side].pop(price, None)
                else:
                    book[side][price] = size
        book["t"] = message.get("t", book["t"])

    def snapshot(self, symbol: str) -> dict[str, Any] | None:
        """The whole book as one ``r: true`` message, or None if it is not known."""
        book = self._books.get(symbol)
        if book is None:
            return None
        return {
            "T": "o", "S": symbol, "t": book["t"],
            "b": [{"p": p, "s": s} for p, s in sorted(book["b"].items(), reverse=True)],
            "a": [{"p": p, "s": s} for p, s in sorted(book["a"].items())],
            "r": True,
        }

    def symbols(self) -> list[str]:
        return sorted(self._books)

    def clear(self) -> None:
        self._books.clear()
