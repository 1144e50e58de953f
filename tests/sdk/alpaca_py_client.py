"""alpaca-py StockDataStream through the proxy; prints what it parsed as JSON lines.

usage: alpaca_py_client.py URL KEY SECRET SYMBOL COUNT
Exits after COUNT messages (trades, quotes, bars of SYMBOL), or after 60 s.
"""

import json
import os
import sys
import threading

from alpaca.data.live import StockDataStream

url, key, secret, symbol, count = sys.argv[1:6]
count = int(count)
received = []
lock = threading.Lock()


def report(kind, item, value):
    with lock:
        received.append({"kind": kind, "symbol": item.symbol, "value": value,
                         "time": item.timestamp.isoformat()})
        print(json.dumps(received[-1]), flush=True)
        if len(received) >= count:
            os._exit(0)


async def on_trade(trade):
    report("trade", trade, trade.price)


async def on_quote(quote):
    report("quote", quote, quote.bid_price)


async def on_bar(bar):
    report("bar", bar, bar.close)


threading.Timer(60, lambda: os._exit(3)).start()
stream = StockDataStream(key, secret, url_override=url)
stream.subscribe_trades(on_trade, symbol)
stream.subscribe_quotes(on_quote, symbol)
stream.subscribe_bars(on_bar, symbol)
stream.run()
