"""alpaca-trade-api 3.2 Stream through the proxy; prints what it parsed as JSON lines.

usage: alpaca_trade_api_client.py BASE_URL KEY SECRET SYMBOL COUNT
BASE_URL is what users pass as data_stream_url (e.g. http://127.0.0.1:8765).
"""

import sys

import pandas
from alpaca_trade_api.stream import Stream
from reporting import Reporter


def utc(timestamp):
    """a-t-a gives trades a New York pandas Timestamp and bars nanoseconds: make both UTC."""
    moment = pandas.Timestamp(timestamp)
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    return moment.isoformat()


url, key, secret, symbol, count = sys.argv[1:6]
reporter = Reporter(int(count), utc)
stream = Stream(key, secret, data_stream_url=url)
reporter.subscribe(stream, symbol)
stream.run()
