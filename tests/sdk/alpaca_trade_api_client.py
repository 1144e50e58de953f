"""An alpaca-trade-api Stream through the proxy; prints what it parsed as JSON lines.

usage: alpaca_trade_api_client.py KIND BASE_URL KEY SECRET SYMBOL COUNT
KIND: stocks, crypto (dials /v1beta2/crypto), news or trading (dials /stream/).
BASE_URL is what users pass as base_url / data_stream_url (http://127.0.0.1:8765).
Runs with alpaca-trade-api 3.2 and 1.5 alike.
"""

import sys

import pandas
from alpaca_trade_api.stream import Stream
from reporting import Reporter


def utc(timestamp):
    """a-t-a gives New York pandas Timestamps, nanoseconds, strings, or (news) the
    MessagePack Timestamp itself: make all UTC text."""
    if hasattr(timestamp, "to_datetime"):
        timestamp = timestamp.to_datetime()
    moment = pandas.Timestamp(timestamp)
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    return moment.isoformat()


kind, url, key, secret, symbol, count = sys.argv[1:7]
reporter = Reporter(int(count), utc)
stream = Stream(key, secret, base_url=url, data_stream_url=url)
if kind == "stocks":
    reporter.subscribe_market(stream, symbol)
elif kind == "crypto":
    reporter.subscribe_market(stream, symbol, prefix="crypto_")
    stream.subscribe_crypto_orderbooks(reporter.on_orderbook, symbol)
elif kind == "news":
    stream.subscribe_news(reporter.on_news, symbol)
elif kind == "trading":
    stream.subscribe_trade_updates(reporter.on_trade_update)
else:
    raise SystemExit("unknown kind %r" % (kind,))
stream.run()
