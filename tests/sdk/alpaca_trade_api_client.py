"""alpaca-trade-api 3.2 Stream through the proxy; prints what it parsed as JSON lines.

usage: alpaca_trade_api_client.py BASE_URL KEY SECRET SYMBOL COUNT
BASE_URL is what users pass as data_stream_url (e.g. http://127.0.0.1:8765).
"""

import json
import os
import sys
import threading

import pandas
from alpaca_trade_api.stream import Stream

url, key, secret, symbol, count = sys.argv[1:6]
count = int(count)
received = []


def utc(timestamp):
    """a-t-a gives trades a New York pandas Timestamp and bars nanoseconds: make both UTC."""
    moment = pandas.Timestamp(timestamp)
    return (moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC"))


def report(kind, item, value):
    received.append({"kind": kind, "symbol": item.symbol, "value": value,
                     "time": utc(item.timestamp).isoformat()})
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
stream = Stream(key, secret, data_stream_url=url)
stream.subscribe_trades(on_trade, symbol)
stream.subscribe_quotes(on_quote, symbol)
stream.subscribe_bars(on_bar, symbol)
stream.run()
