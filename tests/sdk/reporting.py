"""What the SDK client scripts share: print each parsed message as a JSON line, stop at N.

Runs inside the SDKs' virtualenv (the scripts' folder is on sys.path).
"""

import json
import os
import threading


class Reporter:
    """Handlers for trades, quotes and bars that report what the SDK parsed."""

    def __init__(self, count, to_text, give_up_after=60.0):
        self._count = count
        self._to_text = to_text
        self._received = 0
        self._lock = threading.Lock()
        threading.Timer(give_up_after, lambda: os._exit(3)).start()

    def report(self, kind, item, value):
        with self._lock:
            self._received += 1
            line = {"kind": kind, "symbol": item.symbol, "value": value,
                    "time": self._to_text(item.timestamp)}
            print(json.dumps(line), flush=True)
            if self._received >= self._count:
                os._exit(0)

    async def on_trade(self, trade):
        self.report("trade", trade, trade.price)

    async def on_quote(self, quote):
        self.report("quote", quote, quote.bid_price)

    async def on_bar(self, bar):
        self.report("bar", bar, bar.close)

    def subscribe(self, stream, symbol):
        stream.subscribe_trades(self.on_trade, symbol)
        stream.subscribe_quotes(self.on_quote, symbol)
        stream.subscribe_bars(self.on_bar, symbol)
