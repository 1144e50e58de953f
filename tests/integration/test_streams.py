"""Crypto (order books), options, news and the legacy crypto path, through the proxy."""

import json

import msgpack
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.support import T0, Harness, book

CRYPTO_EMPTY = {"T": "subscription", "trades": [], "quotes": [], "orderbooks": [], "bars": [],
                "updatedBars": [], "dailyBars": []}


class CryptoTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def setUp(self):
        self.harness = yield Harness(self).start()
        self.upstream = self.harness.upstream

    @defer.inlineCallbacks
    def test_crypto_perps_pricing(self):
        """Perpetual futures on /v1beta1/crypto-perps/global: pricing (T "p") is a channel,
        acknowledged by name, and routed by symbol."""
        path = "/v1beta1/crypto-perps/global"
        client = yield self.harness.login(path=path)
        client.send({"action": "subscribe", "pricing": ["BTC-PERP"], "trades": ["BTC-PERP"]})
        self.assertEqual((yield client.next()), [dict(
            CRYPTO_EMPTY, trades=["BTC-PERP"], pricing=["BTC-PERP"])])
        [session] = self.upstream.authenticated()
        self.assertEqual((session.path, session.subscriptions["pricing"]), (path, ["BTC-PERP"]))
        pricing = {"T": "p", "S": "BTC-PERP", "t": T0, "ft": T0, "ip": 60000.1, "mp": 60001.5,
                   "fr": 0.0001, "oi": 1250.5}
        self.upstream.inject([dict(pricing, S="ETH-PERP"), pricing])
        [got] = yield client.next()
        self.assertEqual((got["T"], got["S"], got["mp"]), ("p", "BTC-PERP", 60001.5))

    @defer.inlineCallbacks
    def test_late_joiner_gets_whole_book_first(self):
        """A client joining a book already streamed gets the full book (r:true), then updates."""
        path = "/v1beta3/crypto/us"
        a = yield self.harness.login(path=path, msgpack_encoding=True)
        a.send({"action": "subscribe", "orderbooks": ["BTC/USD"]})
        self.assertEqual((yield a.next()), [dict(CRYPTO_EMPTY, orderbooks=["BTC/USD"])])
        self.upstream.inject([book("BTC/USD", [(100.0, 1.0)], [(101.0, 2.0)], r=True)])
        self.upstream.inject([book("BTC/USD", [(100.5, 0.5)], [(101.0, 0)])])
        yield a.next()
        yield a.next()
        b = yield self.harness.login(path=path)
        b.send({"action": "subscribe", "orderbooks": ["BTC/USD"]})
        self.assertEqual((yield b.next()), [dict(CRYPTO_EMPTY, orderbooks=["BTC/USD"])])
        self.assertEqual((yield b.next()), [{
            "T": "o", "S": "BTC/USD", "t": "2024-05-02T14:03:07.000005Z",
            "b": [{"p": 100.5, "s": 0.5}, {"p": 100.0, "s": 1.0}], "a": [], "r": True}])
        self.assertEqual(len(self.harness.upstream_messages("subscribe")), 1)
        self.upstream.inject([book("BTC/USD", [(99.0, 1.0)], [])])
        self.assertEqual((yield b.next())[0]["b"], [{"p": 99.0, "s": 1.0}])
        self.assertEqual((yield a.next())[0]["b"], [{"p": 99.0, "s": 1.0}])

    @defer.inlineCallbacks
    def test_legacy_v1beta2_path_served_from_v1beta3_us(self):
        """/v1beta2/crypto (refused by Alpaca) is served from the v1beta3 "us" upstream."""
        a = yield self.harness.login(path="/v1beta2/crypto?exchanges=CBSE,ERSX")
        a.send({"action": "subscribe", "trades": ["BTC/USD"]})
        yield a.next()
        [session] = self.upstream.authenticated()
        self.assertEqual(session.path, "/v1beta3/crypto/us")
        self.upstream.inject([{"T": "t", "S": "BTC/USD", "p": 60000.5, "s": 0.0123, "t": T0,
                               "i": 1, "tks": "B"}])
        self.assertEqual((yield a.next())[0]["s"], 0.0123)


class OptionsTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def setUp(self):
        self.harness = yield Harness(self).start()

    @defer.inlineCallbacks
    def test_json_client_gets_412(self):
        """Asking for JSON on an options endpoint gets 412 with Alpaca's text."""
        client = yield self.harness.connect(path="/v1beta1/opra",
                                            headers={"Content-Type": "application/json"})
        self.assertEqual((yield client.next()), [{"T": "success", "msg": "connected"}])
        refusal = [{"T": "error", "code": 412,
                    "msg": "option messages are only available in MsgPack format"}]
        self.assertEqual((yield client.next()), refusal)
        client.send({"action": "auth", "key": "k", "secret": "s"})
        self.assertEqual((yield client.next()), refusal)

    @defer.inlineCallbacks
    def test_no_content_type_means_msgpack(self):
        """Without a Content-Type, options clients are answered in MessagePack (C#)."""
        client = yield self.harness.connect(path="/v1beta1/indicative")
        yield client.next()
        self.assertEqual(client.binary_flags, [True])

    @defer.inlineCallbacks
    def test_option_rules(self):
        """quotes ["*"] is 413; channels options lack are 410; trades and quotes work."""
        client = yield self.harness.login(path="/v1beta1/opra", msgpack_encoding=True)
        client.send({"action": "subscribe", "quotes": ["*"]})
        self.assertEqual((yield client.next())[0]["code"], 413)
        client.send({"action": "subscribe", "bars": ["SPY250117C00500000"]})
        self.assertEqual((yield client.next())[0]["code"], 410)
        client.send({"action": "subscribe", "trades": ["*"], "quotes": ["SPY250117C00500000"]})
        self.assertEqual((yield client.next()), [{"T": "subscription", "trades": ["*"],
                                                  "quotes": ["SPY250117C00500000"]}])


class NewsTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_stories_by_symbol_and_star_once_each(self):
        """A story reaches clients of any of its symbols or *, once; no symbols: * only."""
        harness = yield Harness(self).start()
        a = yield harness.login(path="/v1beta1/news")
        b = yield harness.login(path="/v1beta1/news", msgpack_encoding=True)
        a.send({"action": "subscribe", "news": ["AAPL", "TSLA"]})
        self.assertEqual((yield a.next()), [{"T": "subscription", "news": ["AAPL", "TSLA"]}])
        b.send({"action": "subscribe", "news": ["*"]})
        yield b.next()
        stories = [
            {"T": "n", "id": 1, "headline": "both", "created_at": T0, "updated_at": T0,
             "symbols": ["TSLA", "AAPL"], "source": "x"},
            {"T": "n", "id": 2, "headline": "other", "created_at": T0, "updated_at": T0,
             "symbols": ["MSFT"], "source": "x"},
            {"T": "n", "id": 3, "headline": "market", "created_at": T0, "updated_at": T0,
             "symbols": [], "source": "x"},
        ]
        harness.upstream.inject(stories)
        got_a = yield a.next()
        self.assertEqual([s["id"] for s in got_a], [1])
        self.assertEqual(got_a[0]["created_at"], "2024-05-02T14:03:07.000005Z")
        got_b = yield b.next()
        self.assertEqual([s["id"] for s in got_b], [1, 2, 3])
        self.assertIsInstance(got_b[0]["created_at"], msgpack.Timestamp)


WIRE_CASES = [
    # path, channel, symbol, a data message for it
    ("/v2/iex", "trades", "AAPL",
     {"T": "t", "S": "AAPL", "i": 1, "x": "V", "p": 1.5, "s": 1, "c": ["@"], "z": "C", "t": T0}),
    ("/v1beta3/crypto/us", "quotes", "BTC/USD",
     {"T": "q", "S": "BTC/USD", "bp": 1.0, "bs": 1.0, "ap": 2.0, "as": 1.0, "t": T0}),
    ("/v1beta1/news", "news", "AAPL",
     {"T": "n", "id": 5, "headline": "h", "created_at": T0, "updated_at": T0,
      "symbols": ["AAPL"], "source": "s"}),
    ("/v1beta1/opra", "trades", "SPY250117C00500000",
     {"T": "t", "S": "SPY250117C00500000", "t": T0, "p": 1.0, "s": 1, "x": "C", "c": "I"}),
]


class WireRulesTests(TestCase):
    """What the Go and C# SDKs (not installable here) depend on, checked on the raw wire."""

    timeout = 30

    def check_frames(self, client):
        """Every frame an array; control messages alone; ``T`` the first key everywhere."""
        for frame in client.raw:
            decoded = (msgpack.unpackb(frame, timestamp=0) if frame[:1] != b"["
                       else json.loads(frame))
            self.assertIsInstance(decoded, list)
            for message in decoded:
                self.assertEqual(list(message)[0], "T", message)
                if message["T"] in ("success", "error", "subscription"):
                    self.assertEqual(len(decoded), 1, decoded)

    @defer.inlineCallbacks
    def test_every_endpoint_in_both_encodings(self):
        """Plain JSON and MessagePack clients on every endpoint: welcome, auth, ack, data."""
        harness = yield Harness(self).start()
        for path, channel, symbol, data in WIRE_CASES:
            encodings = [True] if "opra" in path else [False, True]
            for use_msgpack in encodings:
                client = yield harness.login(path=path, msgpack_encoding=use_msgpack)
                # JSON sent in a binary frame, as the C# client does.
                client.sendMessage(json.dumps(
                    {"action": "subscribe", channel: [symbol]}).encode(), isBinary=True)
                ack = (yield client.next())[0]
                self.assertEqual((ack["T"], ack[channel]), ("subscription", [symbol]))
                client.send({"action": "subscribe", channel: ["bad symbol!"]})
                self.assertEqual((yield client.next()),
                                 [{"T": "error", "code": 400, "msg": "invalid syntax"}])
                harness.upstream.inject([data], path=harness.pool.sessions[-1].stream.path)
                [got] = yield client.next()
                self.assertEqual(got["T"], data["T"])
                self.assertEqual(client.binary_flags[-1], use_msgpack)
                self.check_frames(client)
                client.sendClose()
                yield client.closed
