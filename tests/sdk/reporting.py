"""What the SDK client scripts share: print each parsed message as a JSON line, stop at N.

Runs inside the SDKs' virtualenv (the scripts' folder is on sys.path).  Each line
is {"kind", "symbol", "value", "time"}: what the SDK made of the message.
"""

import json
import os
import threading


class Reporter:
    """Handlers for every stream kind that report what the SDK parsed."""

    def __init__(self, count, to_text, give_up_after=60.0):
        self._count = count
        self._to_text = to_text
        self._received = 0
        self._lock = threading.Lock()
        threading.Timer(give_up_after, lambda: os._exit(3)).start()

    def report(self, kind, symbol, value, moment):
        with self._lock:
            self._received += 1
            line = {"kind": kind, "symbol": symbol, "value": value,
                    "time": self._to_text(moment)}
            print(json.dumps(line), flush=True)
            if self._received >= self._count:
                os._exit(0)

    async def on_trade(self, trade):
        self.report("trade", trade.symbol, trade.price, trade.timestamp)

    async def on_quote(self, quote):
        self.report("quote", quote.symbol, quote.bid_price, quote.timestamp)

    async def on_bar(self, bar):
        self.report("bar", bar.symbol, bar.close, bar.timestamp)

    async def on_orderbook(self, book):
        self.report("orderbook", book.symbol, len(book.bids), book.timestamp)

    async def on_news(self, story):
        self.report("news", ",".join(story.symbols), story.headline, story.created_at)

    async def on_trade_update(self, update):
        order = update.order
        symbol = order["symbol"] if isinstance(order, dict) else order.symbol
        event = getattr(update.event, "value", update.event)
        self.report("trade_update", symbol, event, update.timestamp)

    def subscribe_market(self, stream, symbol, prefix=""):
        """Trades, quotes and bars (``prefix`` is ``crypto_`` for a-t-a's crypto)."""
        getattr(stream, "subscribe_%strades" % prefix)(self.on_trade, symbol)
        getattr(stream, "subscribe_%squotes" % prefix)(self.on_quote, symbol)
        getattr(stream, "subscribe_%sbars" % prefix)(self.on_bar, symbol)
