"""Unmodified SDK clients through the proxy: each stream of each SDK, and several at once.

The SDKs run from their own virtualenv (tests/sdk_env.py) as subprocesses; the
scripts in tests/sdk print what the SDK parsed.  The fake upstream injects data
once the proxy has subscribed upstream (or, for trade updates, once the client
listens), so every expected message is the SDK's parse of the proxy's output.
"""

import json
import os
import shutil

import msgpack
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from alpaca_proxy.proxy import Limits
from tests import sdk_env
from tests.support import KEY, POLYGON_KEY, SECRET, Harness, logged

STAMP = msgpack.Timestamp(1714658587, 120450000)
MINUTE = msgpack.Timestamp(1714658580, 0)
STAMP_TEXT = "2024-05-02T14:03:07.12045"


def market_frame(symbols):
    """Trades, quotes and bars for each symbol, as upstream would batch them."""
    frame = []
    for n, symbol in enumerate(symbols):
        frame += [
            {"T": "t", "S": symbol, "i": 100 + n, "x": "V", "p": 10.5 + n, "s": 100,
             "c": ["@"], "z": "C", "t": STAMP},
            {"T": "q", "S": symbol, "bx": "V", "bp": 10.25 + n, "bs": 3, "ax": "V",
             "ap": 10.75 + n, "as": 2, "c": ["R"], "z": "C", "t": STAMP},
            {"T": "b", "S": symbol, "o": 10.0, "h": 11.0, "l": 9.5, "c": 10.0 + n, "v": 1200,
             "t": MINUTE, "n": 12, "vw": 10.3},
        ]
    return frame


def market_expected(symbol, n=0):
    return [("trade", symbol, 10.5 + n), ("quote", symbol, 10.25 + n), ("bar", symbol, 10.0 + n)]


def crypto_frame():
    frame = []
    for n, symbol in enumerate(["BTC/USD", "ETH/USD"]):
        frame += [
            {"T": "t", "S": symbol, "p": 60000.5 + n, "s": 0.0123, "t": STAMP, "i": 7 + n,
             "tks": "B"},
            {"T": "q", "S": symbol, "bp": 60000.0 + n, "bs": 0.5, "ap": 60001.0, "as": 0.7,
             "t": STAMP},
            {"T": "b", "S": symbol, "o": 59990.0, "h": 60010.0, "l": 59980.0, "c": 60005.0 + n,
             "v": 1.25, "t": MINUTE, "n": 40, "vw": 60001.2},
            {"T": "o", "S": symbol, "t": STAMP, "r": True,
             "b": [{"p": 60000.0, "s": 0.5}, {"p": 59999.0, "s": 1.0}],
             "a": [{"p": 60001.0, "s": 0.7}]},
        ]
    return frame


OPTION = "SPY250117C00500000"

OPTION_FRAME = [
    {"T": "t", "S": OPTION, "t": STAMP, "p": 3.25, "s": 2, "x": "C", "c": "I"},
    {"T": "q", "S": OPTION, "t": STAMP, "bx": "C", "bp": 3.2, "bs": 10, "ax": "C", "ap": 3.3,
     "as": 12, "c": "A"},
    {"T": "t", "S": "AAPL250117P00180000", "t": STAMP, "p": 1.0, "s": 1, "x": "C", "c": "I"},
]


def story(number, symbols, headline):
    return {"T": "n", "id": number, "headline": headline, "summary": "s", "author": "a",
            "created_at": STAMP, "updated_at": STAMP, "url": "https://example.com/n",
            "content": "<p>c</p>", "symbols": symbols, "source": "benzinga"}


ORDER = {
    "id": "0f3e4b0c-1d2e-4f50-8a6b-7c8d9e0f1a2b", "client_order_id": "algoA-17",
    "created_at": "2024-05-02T14:03:00.1Z", "updated_at": "2024-05-02T14:03:07.551Z",
    "submitted_at": "2024-05-02T14:03:00.2Z", "filled_at": "2024-05-02T14:03:07.551Z",
    "expired_at": None, "canceled_at": None, "failed_at": None, "replaced_at": None,
    "replaced_by": None, "replaces": None, "asset_id": "b0b6dd9d-8b9b-48a9-ba46-b9d54906e415",
    "symbol": "MSFT", "asset_class": "us_equity", "notional": None, "qty": "10",
    "filled_qty": "10", "filled_avg_price": "401.49", "order_class": "simple",
    "order_type": "limit", "type": "limit", "side": "buy", "time_in_force": "day",
    "limit_price": "401.5", "stop_price": None, "status": "filled", "extended_hours": False,
    "legs": None, "trail_percent": None, "trail_price": None, "hwm": None,
}
FILL = {"event": "fill", "execution_id": "9b1c5d2e-3f40-4a5b-8c6d-7e8f9a0b1c2d", "order": ORDER, "price": "401.49",
        "qty": "10", "position_qty": "10", "timestamp": "2024-05-02T14:03:07.551Z"}


def js_stock_client(testcase, harness):
    """The official JS SDK's stock stream (tests/js) against a TLS harness, for AAPL."""
    modules = sdk_env.node_modules()
    node = shutil.which("node")
    testcase.assertIsNotNone(node, "node is not installed")
    return getProcessOutputAndValue(
        node, [sdk_env.js_script("stock_client.js"), "https://localhost:%d" % harness.port,
               KEY, SECRET, "AAPL", "3"],
        env={"NODE_PATH": modules, "NODE_EXTRA_CA_CERTS": harness.ca_path,
             "PATH": os.environ.get("PATH", "")}, reactor=reactor)


class SdkMatrixTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        # Builds the SDKs' own virtualenv on first use (about 25 s), then reuses it.
        self.python = sdk_env.python()
        self.harness = yield Harness(self).start()
        self.upstream = self.harness.upstream
        self.ws = "ws://127.0.0.1:%d" % (self.harness.port,)
        self.http = "http://127.0.0.1:%d" % (self.harness.port,)

    def client(self, script, kind, url, symbol, count, python=None):
        return getProcessOutputAndValue(
            python or self.python, [sdk_env.script(script), kind, url, KEY, SECRET, symbol,
                                    str(count)],
            env={}, reactor=reactor)

    def subscribed(self, channels, symbol):
        def check():
            return any(all(symbol in c.subscriptions.get(channel, ()) for channel in channels)
                       for c in self.upstream.authenticated())
        return self.upstream.when(check)

    def listening(self):
        return logged(self, lambda event: event.get("streams") == ["trade_updates"])

    def lines(self, result):
        out, err, code = result
        self.assertEqual(code, 0, (out.decode() + err.decode())[-3000:])
        return [json.loads(line) for line in out.decode().splitlines()]

    def assertParsed(self, lines, expected, time_prefix=STAMP_TEXT):
        self.assertEqual([(m["kind"], m["symbol"], m["value"]) for m in lines], expected)
        self.assertTrue(lines[0]["time"].startswith(time_prefix), lines[0])

    @defer.inlineCallbacks
    def market_cell(self, script, url, symbol="AAPL", python=None):
        run = self.client(script, "stocks", url, symbol, 3, python)
        yield self.subscribed(("trades", "quotes", "bars"), symbol)
        self.upstream.inject(market_frame([symbol, "OTHER"]))
        self.assertParsed(self.lines((yield run)), market_expected(symbol))

    @defer.inlineCallbacks
    def crypto_cell(self, script, url):
        run = self.client(script, "crypto", url, "BTC/USD", 4)
        yield self.subscribed(("trades", "quotes", "bars", "orderbooks"), "BTC/USD")
        self.upstream.inject(crypto_frame())
        self.assertParsed(self.lines((yield run)), [
            ("trade", "BTC/USD", 60000.5), ("quote", "BTC/USD", 60000.0),
            ("bar", "BTC/USD", 60005.0), ("orderbook", "BTC/USD", 2)])

    @defer.inlineCallbacks
    def news_cell(self, script, url):
        run = self.client(script, "news", url, "AAPL", 1)
        yield self.subscribed(("news",), "AAPL")
        self.upstream.inject([story(1, ["MSFT"], "not for us"), story(2, [], "market-wide"),
                              story(3, ["TSLA", "AAPL"], "for us")])
        self.assertParsed(self.lines((yield run)), [("news", "TSLA,AAPL", "for us")])

    @defer.inlineCallbacks
    def trading_cell(self, script, url, python=None):
        listening = self.listening()
        run = self.client(script, "trading", url, "-", 1, python)
        yield listening
        self.upstream.trade_update(FILL)
        self.assertParsed(self.lines((yield run)), [("trade_update", "MSFT", "fill")],
                          "2024-05-02T14:03:07.551")

    # -- alpaca-py 0.44 ---------------------------------------------------------

    def test_alpaca_py_stocks(self):
        """alpaca-py StockDataStream parses trades, quotes and bars of its symbol only."""
        return self.market_cell("alpaca_py_client.py", self.ws + "/v2/iex")

    def test_alpaca_py_crypto(self):
        """alpaca-py CryptoDataStream: trades, quotes, bars and order books."""
        return self.crypto_cell("alpaca_py_client.py", self.ws + "/v1beta3/crypto/us")

    def test_alpaca_py_news(self):
        """alpaca-py NewsDataStream gets only stories naming its symbol."""
        return self.news_cell("alpaca_py_client.py", self.ws + "/v1beta1/news")

    @defer.inlineCallbacks
    def test_alpaca_py_options(self):
        """alpaca-py OptionDataStream (MessagePack only): trades and quotes of its contract."""
        run = self.client("alpaca_py_client.py", "options", self.ws + "/v1beta1/opra",
                          OPTION, 2)
        yield self.subscribed(("trades", "quotes"), OPTION)
        self.upstream.inject(OPTION_FRAME)
        self.assertParsed(self.lines((yield run)), [("trade", OPTION, 3.25),
                                                    ("quote", OPTION, 3.2)])

    def test_alpaca_py_trading(self):
        """alpaca-py TradingStream (legacy auth form) gets trade updates."""
        return self.trading_cell("alpaca_py_client.py", self.ws + "/stream")

    # -- alpaca-trade-api 3.2 ---------------------------------------------------

    def test_alpaca_trade_api_stocks(self):
        """alpaca-trade-api Stream with data_stream_url: stocks."""
        return self.market_cell("alpaca_trade_api_client.py", self.http)

    def test_alpaca_trade_api_crypto_on_v1beta2(self):
        """alpaca-trade-api's crypto stream dials /v1beta2/crypto; the proxy serves it."""
        return self.crypto_cell("alpaca_trade_api_client.py", self.http)

    def test_alpaca_trade_api_news(self):
        """alpaca-trade-api news stream."""
        return self.news_cell("alpaca_trade_api_client.py", self.http)

    def test_alpaca_trade_api_trading(self):
        """alpaca-trade-api TradingStream dials {base}/stream/ and gets trade updates."""
        return self.trading_cell("alpaca_trade_api_client.py", self.http)

    # -- alpaca-trade-api 1.5 (inside pylivetrader 0.7, alpaca-backtrader-api 0.15) --

    def test_alpaca_trade_api_1_5_stocks(self):
        """alpaca-trade-api 1.5's Stream (websockets 9) gets its stocks through the proxy."""
        return self.market_cell("alpaca_trade_api_client.py", self.http,
                                python=sdk_env.python("ata15"))

    def test_alpaca_trade_api_1_5_trading(self):
        """alpaca-trade-api 1.5's TradingStream (pylivetrader's order updates)."""
        return self.trading_cell("alpaca_trade_api_client.py", self.http,
                                 python=sdk_env.python("ata15"))

    # -- the JS SDK (node), which forces wss:// --------------------------------------

    @defer.inlineCallbacks
    def test_js_sdk_stocks_over_tls(self):
        """The official JS SDK (auth before welcome, msgpack) streams through a TLS listener."""
        harness = yield Harness(self, tls=True).start()
        run = js_stock_client(self, harness)
        self.upstream = harness.upstream
        yield self.subscribed(("trades", "quotes", "bars"), "AAPL")
        harness.upstream.inject(market_frame(["AAPL", "OTHER"]))
        self.assertParsed(self.lines((yield run)), market_expected("AAPL"),
                          "2024-05-02T14:03:07.120")

    @defer.inlineCallbacks
    def test_js_sdk_4_stocks_over_plain_ws(self):
        """The JS SDK 4.x (npm's latest) with a per-stream url: plain ws://, no TLS."""
        modules = sdk_env.node_modules("js4", sdk_env.JS4_PACKAGES)
        node = shutil.which("node")
        self.assertIsNotNone(node, "node is not installed")
        run = getProcessOutputAndValue(
            node, [sdk_env.js_script("stock_client_v4.js"), self.ws + "/v2/iex", KEY, SECRET,
                   "AAPL", "3"],
            env={"NODE_PATH": modules, "PATH": os.environ.get("PATH", "")}, reactor=reactor)
        yield self.subscribed(("trades", "quotes", "bars"), "AAPL")
        self.upstream.inject(market_frame(["AAPL", "OTHER"]))
        self.assertParsed(self.lines((yield run)), market_expected("AAPL"),
                          "2024-05-02T14:03:07.120")

    # -- several at once ----------------------------------------------------------

    @defer.inlineCallbacks
    def test_two_alpaca_py_and_one_alpaca_trade_api_client_at_once(self):
        """Each SDK client gets exactly its own trades, quotes and bars over one upstream."""
        runs = [
            self.client("alpaca_py_client.py", "stocks", self.ws + "/v2/iex", "AAPL", 3),
            self.client("alpaca_py_client.py", "stocks", self.ws + "/v2/iex", "MSFT", 3),
            self.client("alpaca_trade_api_client.py", "stocks", self.http, "NVDA", 3),
        ]
        for symbol in ("AAPL", "MSFT", "NVDA"):
            yield self.subscribed(("trades", "quotes", "bars"), symbol)
        self.upstream.inject(market_frame(["AAPL", "MSFT", "NVDA", "TSLA"]))
        results = yield defer.gatherResults(runs)
        for result, (symbol, n) in zip(results, [("AAPL", 0), ("MSFT", 1), ("NVDA", 2)]):
            self.assertParsed(self.lines(result), market_expected(symbol, n))
        self.assertEqual(self.upstream.handshakes, 1)
        self.assertEqual(len(self.upstream.sessions), 1)


def polygon_trade(symbol, price, at=1714658587120):
    return {"ev": "T", "sym": symbol, "x": 4, "i": "71", "z": 3, "p": price, "s": 100,
            "c": [12, 37], "t": at, "q": 1001}


def polygon_quote(symbol, bid, at=1714658587125):
    return {"ev": "Q", "sym": symbol, "bx": 11, "bp": bid, "bs": 2, "ax": 12, "ap": bid + 0.02,
            "as": 3, "c": 0, "t": at, "z": 3, "q": 1002}


class PolygonSdkTests(TestCase):
    """The official Polygon/Massive WebSocketClient (massive 2.9.1, polygon-api-client
    1.16.3), pointed at the proxy with feed="127.0.0.1:PORT", secure=False."""

    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.python = sdk_env.python("polygon")
        self.harness = yield Harness(self).start()
        self.feed = "127.0.0.1:%d" % (self.harness.port,)

    def client(self, package, market, subscriptions, count):
        return getProcessOutputAndValue(
            self.python, [sdk_env.script("polygon_client.py"), package, self.feed, market,
                          POLYGON_KEY, subscriptions, str(count)], env={}, reactor=reactor)

    def subscribed(self, market, *params):
        polygon = self.harness.polygon
        return polygon.when(lambda: any(set(params) <= c.subscriptions
                                        for c in polygon.authenticated(market)))

    def parsed(self, result):
        out, err, code = result
        self.assertEqual(code, 0, (out.decode() + err.decode())[-3000:])
        return [(m["kind"], m["symbol"], m["value"]) for m in map(json.loads, out.splitlines())]

    @defer.inlineCallbacks
    def test_massive_and_polygon_clients_at_once(self):
        """Both official clients on one upstream, each getting exactly its subscriptions."""
        massive = self.client("massive", "stocks", "T.MSFT,Q.*", 3)
        polygon = self.client("polygon", "stocks", "T.AAPL", 2)
        yield self.subscribed("stocks", "T.MSFT", "Q.*", "T.AAPL")
        self.harness.polygon.inject([
            polygon_trade("MSFT", 412.5), polygon_trade("AAPL", 190.25),
            polygon_quote("MSFT", 412.4), polygon_quote("AAPL", 190.2)])
        self.harness.polygon.inject([polygon_trade("AAPL", 191.0)])
        massive_lines, polygon_lines = yield defer.gatherResults([massive, polygon])
        self.assertEqual(self.parsed(massive_lines), [
            ("EquityTrade", "MSFT", 412.5), ("EquityQuote", "MSFT", 412.4),
            ("EquityQuote", "AAPL", 190.2)])
        self.assertEqual(self.parsed(polygon_lines), [
            ("EquityTrade", "AAPL", 190.25), ("EquityTrade", "AAPL", 191.0)])
        self.assertEqual(self.harness.polygon.handshakes, 1)
        self.assertEqual(len(self.harness.polygon.authenticated()), 1)

    @defer.inlineCallbacks
    def test_massive_crypto_and_polygon_indices(self):
        """Other markets: crypto pairs (``pair``) and index values (``T``)."""
        crypto = self.client("massive", "crypto", "XT.BTC-USD", 1)
        indices = self.client("polygon", "indices", "V.I:SPX", 1)
        yield self.subscribed("crypto", "XT.BTC-USD")
        yield self.subscribed("indices", "V.I:SPX")
        self.harness.polygon.inject([{"ev": "XT", "pair": "BTC-USD", "p": 60000.5, "t": 1,
                                      "s": 0.01, "c": [1], "i": "9", "x": 1, "r": 2}], "crypto")
        self.harness.polygon.inject([{"ev": "V", "T": "I:SPX", "val": 5012.25, "t": 1}],
                                    "indices")
        crypto_lines, index_lines = yield defer.gatherResults([crypto, indices])
        self.assertEqual(self.parsed(crypto_lines), [("CryptoTrade", "BTC-USD", 60000.5)])
        self.assertEqual(self.parsed(index_lines), [("IndexValue", "I:SPX", 5012.25)])


class SdkPingTests(TestCase):
    """With pings to clients on, every SDK in the matrix answers them and stays."""

    timeout = 180

    @defer.inlineCallbacks
    def ping_rounds(self, harness, rounds=8):
        """Advance the proxy's clock past several ping intervals and pong timeouts,
        leaving real time for the SDKs' pongs; return the clients that lasted."""
        before = set(harness.proxy.clients)
        for _ in range(rounds):
            harness.clock.advance(1.0)
            yield deferLater(reactor, 0.1, lambda: None)
        lasted = before & set(harness.proxy.clients)
        unanswered = [c for c in lasted if c.autoPingPending is not None]
        return before, lasted, unanswered

    @defer.inlineCallbacks
    def test_python_sdks_answer_pings(self):
        """alpaca-py, alpaca-trade-api 3.2 and 1.5, massive and polygon-api-client answer
        the proxy's pings (interval 1 s, timeout 2.5 s) and keep their data."""
        harness = yield Harness(self, limits=Limits(ping_interval=1.0, ping_timeout=2.5)).start()
        upstream, polygon = harness.upstream, harness.polygon
        ws, http = "ws://127.0.0.1:%d" % harness.port, "http://127.0.0.1:%d" % harness.port
        runs = []
        for script, python, url, symbol in (
                ("alpaca_py_client.py", sdk_env.python(), ws + "/v2/iex", "AAPL"),
                ("alpaca_trade_api_client.py", sdk_env.python(), http, "MSFT"),
                ("alpaca_trade_api_client.py", sdk_env.python("ata15"), http, "NVDA")):
            runs.append(getProcessOutputAndValue(
                python, [sdk_env.script(script), "stocks", url, KEY, SECRET, symbol, "3"],
                env={}, reactor=reactor))
        for package in ("massive", "polygon"):
            runs.append(getProcessOutputAndValue(
                sdk_env.python("polygon"),
                [sdk_env.script("polygon_client.py"), package, "127.0.0.1:%d" % harness.port,
                 "stocks", POLYGON_KEY, "T.TSLA", "1"], env={}, reactor=reactor))
        yield upstream.when(lambda: any(
            {"AAPL", "MSFT", "NVDA"} <= set(c.subscriptions.get("bars", ()))
            for c in upstream.authenticated()))
        yield polygon.when(lambda: any({"T.TSLA"} <= c.subscriptions
                                       for c in polygon.authenticated("stocks")))
        before, lasted, unanswered = yield self.ping_rounds(harness)
        self.assertEqual(len(before), 5)
        self.assertEqual((lasted, unanswered), (before, []))
        upstream.inject(market_frame(["AAPL", "MSFT", "NVDA"]))
        polygon.inject([{"ev": "T", "sym": "TSLA", "x": 4, "i": "1", "z": 3, "p": 180.5,
                         "s": 10, "c": [], "t": 1714658587120, "q": 1}], market="stocks")
        for result in (yield defer.gatherResults(runs)):
            out, err, code = result
            self.assertEqual(code, 0, (out + err).decode()[-2000:])

    @defer.inlineCallbacks
    def test_js_sdk_answers_pings(self):
        """The JS SDK (ws) answers the proxy's pings over TLS and keeps its data."""
        harness = yield Harness(self, tls=True,
                                limits=Limits(ping_interval=1.0, ping_timeout=2.5)).start()
        run = js_stock_client(self, harness)
        yield harness.upstream.when(lambda: any(
            "AAPL" in c.subscriptions.get("bars", ()) for c in harness.upstream.authenticated()))
        before, lasted, unanswered = yield self.ping_rounds(harness)
        self.assertEqual(len(before), 1)
        self.assertEqual((lasted, unanswered), (before, []))
        harness.upstream.inject(market_frame(["AAPL"]))
        out, err, code = yield run
        self.assertEqual(code, 0, (out + err).decode()[-2000:])
