"""Unmodified SDK clients through the proxy: two alpaca-py streams and one alpaca-trade-api."""

import json

import msgpack
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests import sdk_env
from tests.support import KEY, SECRET, Harness

STAMP = msgpack.Timestamp(1714658587, 120450000)


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
             "t": msgpack.Timestamp(1714658580, 0), "n": 12, "vw": 10.3},
        ]
    return frame


def expected(symbol, n):
    return [
        {"kind": "trade", "symbol": symbol, "value": 10.5 + n},
        {"kind": "quote", "symbol": symbol, "value": 10.25 + n},
        {"kind": "bar", "symbol": symbol, "value": 10.0 + n},
    ]


class SdkEndToEndTests(TestCase):
    timeout = 180

    def setUp(self):
        # Builds the SDKs' own virtualenv on first use (about 25 s), then reuses it.
        self.python = sdk_env.python()

    def run_client(self, script, url, symbol):
        return getProcessOutputAndValue(
            self.python, [sdk_env.script(script), url, KEY, SECRET, symbol, "3"],
            env={}, reactor=reactor)

    @defer.inlineCallbacks
    def test_two_alpaca_py_and_one_alpaca_trade_api_client_at_once(self):
        """Each SDK client gets exactly its own trades, quotes and bars over one upstream."""
        harness = yield Harness(self).start()
        base = "ws://127.0.0.1:%d" % (harness.port,)
        runs = [
            self.run_client("alpaca_py_client.py", base + "/v2/iex", "AAPL"),
            self.run_client("alpaca_py_client.py", base + "/v2/iex", "MSFT"),
            self.run_client("alpaca_trade_api_client.py", "http://127.0.0.1:%d" % harness.port,
                            "NVDA"),
        ]
        upstream = harness.upstream

        def everyone_subscribed():
            sessions = upstream.authenticated()
            return len(sessions) == 1 and all(
                symbol in sessions[0].subscriptions[channel]
                for symbol in ("AAPL", "MSFT", "NVDA")
                for channel in ("trades", "quotes", "bars"))

        yield upstream.when(everyone_subscribed)
        upstream.inject(market_frame(["AAPL", "MSFT", "NVDA", "TSLA"]))
        results = yield defer.gatherResults(runs)
        for (out, err, code), (symbol, n) in zip(results, [("AAPL", 0), ("MSFT", 1),
                                                           ("NVDA", 2)]):
            self.assertEqual(code, 0, err.decode()[-2000:])
            lines = [json.loads(line) for line in out.decode().splitlines()]
            self.assertEqual([{k: v for k, v in m.items() if k != "time"} for m in lines],
                             expected(symbol, n))
            self.assertTrue(lines[0]["time"].startswith("2024-05-02T14:03:07.12045"), lines[0])
        self.assertEqual(upstream.handshakes, 1)
        self.assertEqual(len(upstream.sessions), 1)
