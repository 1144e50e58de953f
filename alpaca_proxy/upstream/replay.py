"""Links to a recording instead of a provider (``--replay``).

A replay link is up (authenticated) at once, acknowledges every change with
what it holds, as upstream would (then sends a newly subscribed crypto book
whole, from the books it keeps of every frame played), and plays the frames the player hands it: a
market-data frame is split as the live link splits it (MessagePack elements
keep their recorded bytes), its control messages (the recorded session's own
welcome, acks and errors) are dropped, and its data goes to the session, which
routes it to each client by subscription.  A trading frame's events go to every
listener.  With ``--replay-shift`` each message's times are moved by the
player's offset, and its bytes rebuilt.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from alpaca_proxy import codec
from alpaca_proxy.dialects import alpaca_data, alpaca_trading, polygon
from alpaca_proxy.recording.fileformat import Frame
from alpaca_proxy.books import OrderBooks
from alpaca_proxy.streams import CRYPTO, POLYGON, TRADING, Stream
from alpaca_proxy.subscriptions import Key
from alpaca_proxy.upstream.alpaca_data import AlpacaDataLink
from alpaca_proxy.upstream.link import ILink
from alpaca_proxy.upstream.polygon import PolygonLink


@implementer(ILink)
class ReplayLink(Service):
    """A market-data session's link to the player."""

    _log = Logger()

    def __init__(self, receiver: Any, stream: Stream, player: Any, clock: Any) -> None:
        self.receiver = receiver
        self.stream = stream
        self.player = player
        self.clock = clock
        self.ready = False
        #: What this link holds "upstream": every key subscribed and not unsubscribed.
        self._holding: set[Key] = set()
        self._calls: list[Any] = []
        #: Crypto books from every frame played, subscribed or not: a client that
        #: subscribes to a book gets it whole first, as from Alpaca.
        self.books = OrderBooks()
        self._shifted: Callable[[dict, int], dict] = (
            polygon.shifted if stream.kind == POLYGON else alpaca_data.shifted)

    def __repr__(self) -> str:
        return "<%s %s>" % (type(self).__name__, self.stream.path)

    @property
    def subscribed(self) -> bool:
        """Whether any client of this link holds a subscription."""
        return bool(self._holding)

    # -- ILink ---------------------------------------------------------------------

    def send_change(self, action: str, keys: list[Key]) -> None:
        added = frozenset(keys) - self._holding if action == "subscribe" else frozenset()
        if action == "subscribe":
            self._holding.update(keys)
        else:
            self._holding.difference_update(keys)
        # Answered on the next turn, as from a socket: the session is mid-request now.
        self._later(self._acknowledge, frozenset(self._holding), added)

    def _acknowledge(self, holding: frozenset[Key], added: frozenset[Key]) -> None:
        if not self.ready:
            return
        self.receiver.acked(set(holding))
        whole = self._whole_books(added)
        if whole:  # as Alpaca sends a whole book after acknowledging it
            self.receiver.received(whole, 0)
        if added:
            self.player.interest()  # after the ack: clients see acks before data

    def _whole_books(self, added: frozenset[Key]) -> list[codec.Element]:
        """Whole books, as far as the recording has shown them, for newly added books."""
        wanted = sorted(symbol for channel, symbol in added if channel == "orderbooks")
        symbols: dict[str, None] = {}
        for symbol in wanted:
            symbols.update(dict.fromkeys(self.books.symbols() if symbol == "*" else [symbol]))
        snapshots = [self.books.snapshot(symbol) for symbol in symbols]
        return [codec.Element.of(snapshot) for snapshot in snapshots if snapshot]

    def drop(self) -> None:
        """A recording never goes mute."""

    def close(self) -> Deferred:
        """Leave the player; the session sees the link go down, as after a close."""
        self.player.detach(self)
        was_ready, self.ready = self.ready, False
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls.clear()
        if was_ready:
            self.receiver.link_down(True)
        return succeed(None)

    # -- the service -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.player.attach(self)
        self._later(self._come_up)

    def stopService(self) -> Deferred:
        super().stopService()
        return self.close()

    def _come_up(self) -> None:
        self.receiver.link_connected()
        self.ready = True
        self.receiver.link_ready()

    def _later(self, function: Callable[..., None], *args: Any) -> None:
        self._calls = [call for call in self._calls if call.active()]
        self._calls.append(self.clock.callLater(0, function, *args))

    # -- from the player -----------------------------------------------------------------

    def play(self, frame: Frame, shift_ns: int) -> None:
        """One recorded frame, at its time."""
        if not self.ready:
            return
        try:
            data = data_elements(self.stream.kind, frame.payload)
        except codec.DecodeError:
            return  # recorded as upstream sent it; the live link had skipped it too
        if self.stream.kind == CRYPTO:
            for element in data:
                if element.kind == "o":
                    self.books.apply(element.message)
        if shift_ns and data:
            data = [self._moved(element.message, shift_ns) for element in data]
        self.receiver.received(data, len(frame.payload))

    def _moved(self, message: dict, shift_ns: int) -> codec.Element:
        moved = self._shifted(message, shift_ns)
        if self.stream.kind == POLYGON:
            return codec.Element(moved, b"")  # JSON only: no bytes to keep
        return codec.Element.of(moved)


@implementer(ILink)
class ReplayTradingLink(ReplayLink):
    """The trading stream's link to the player: every recorded event to the session."""

    @property
    def subscribed(self) -> bool:
        return any(self.receiver.listeners.values())

    def send_change(self, action: str, keys: list[Key]) -> None:
        raise NotImplementedError("the trading stream is account-wide: nothing to subscribe")

    def listened(self) -> None:
        """A client listens to a stream: that is its interest."""
        self.player.interest()

    def play(self, frame: Frame, shift_ns: int) -> None:
        if not self.ready:
            return
        events = trading_events(frame.payload)
        if not events:
            return  # the recorded session's authorization and listening replies
        message = events[0]
        payload, binary = frame.payload, frame.binary
        if shift_ns:
            message = alpaca_trading.shifted(message, shift_ns)
            payload = codec.to_json(message)
            binary = frame.binary
        self.receiver.event(message["stream"], message, payload, binary)


def data_elements(kind: str, payload: bytes) -> list[codec.Element]:
    """A recorded market-data frame's data messages, split as the live link splits them
    (``codec.DecodeError`` if it is not a frame)."""
    link = PolygonLink if kind == POLYGON else AlpacaDataLink
    return [element for element in link.split(payload) if not link.is_control(element)]


def trading_events(payload: bytes) -> list[dict]:
    """A recorded trading frame's event (``trade_updates``), or nothing."""
    try:
        message = codec.decode(payload)
    except codec.DecodeError:
        return []
    if isinstance(message, dict) and message.get("stream") in alpaca_trading.STREAMS:
        return [message]
    return []


def replay_link(receiver: Any, stream: Stream, player: Any, clock: Any) -> ReplayLink:
    """The replay link for a stream's session."""
    link_class = ReplayTradingLink if stream.kind == TRADING else ReplayLink
    return link_class(receiver, stream, player, clock)
