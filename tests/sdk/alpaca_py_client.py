"""An alpaca-py stream through the proxy; prints what it parsed as JSON lines.

usage: alpaca_py_client.py KIND URL KEY SECRET SYMBOL COUNT
KIND: stocks, crypto, news, options or trading; URL is the full url_override.
Exits after COUNT messages, or with status 3 after 60 s.
"""

import sys

from alpaca.data.live import (CryptoDataStream, NewsDataStream, OptionDataStream,
                              StockDataStream)
from alpaca.trading.stream import TradingStream
from reporting import Reporter


def text(moment):
    return moment if isinstance(moment, str) else moment.isoformat()


kind, url, key, secret, symbol, count = sys.argv[1:7]
reporter = Reporter(int(count), text)
if kind == "stocks":
    stream = StockDataStream(key, secret, url_override=url)
    reporter.subscribe_market(stream, symbol)
elif kind == "crypto":
    stream = CryptoDataStream(key, secret, url_override=url)
    reporter.subscribe_market(stream, symbol)
    stream.subscribe_orderbooks(reporter.on_orderbook, symbol)
elif kind == "options":
    stream = OptionDataStream(key, secret, url_override=url)
    stream.subscribe_trades(reporter.on_trade, symbol)
    stream.subscribe_quotes(reporter.on_quote, symbol)
elif kind == "news":
    stream = NewsDataStream(key, secret, url_override=url)
    stream.subscribe_news(reporter.on_news, symbol)
elif kind == "trading":
    stream = TradingStream(key, secret, paper=True, url_override=url)
    stream.subscribe_trade_updates(reporter.on_trade_update)
else:
    raise SystemExit("unknown kind %r" % (kind,))
stream.run()
