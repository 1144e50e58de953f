"""alpaca-py StockDataStream through the proxy; prints what it parsed as JSON lines.

usage: alpaca_py_client.py URL KEY SECRET SYMBOL COUNT
Exits after COUNT messages (trades, quotes, bars of SYMBOL), or with status 3 after 60 s.
"""

import sys

from alpaca.data.live import StockDataStream
from reporting import Reporter

url, key, secret, symbol, count = sys.argv[1:6]
reporter = Reporter(int(count), lambda moment: moment.isoformat())
stream = StockDataStream(key, secret, url_override=url)
reporter.subscribe(stream, symbol)
stream.run()
