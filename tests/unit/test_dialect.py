"""Unit tests for the Alpaca market-data dialect and the path table."""

from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy import streams
from alpaca_proxy.credentials import Credentials, header_credentials
from alpaca_proxy.dialects.alpaca_data import DIALECTS, Auth, ProtocolError, error
from alpaca_proxy.subscriptions import Change

STOCKS, CRYPTO, OPTIONS, NEWS = (DIALECTS[k] for k in ("stocks", "crypto", "options", "news"))


class ParseTests(SynchronousTestCase):
    def assertCode(self, dialect, message, code):
        with self.assertRaises(ProtocolError) as raised:
            dialect.parse(message)
        self.assertEqual(raised.exception.code, code)

    def test_auth(self):
        """An auth message yields credentials, in any key order."""
        self.assertEqual(
            STOCKS.parse({"secret": "s", "key": "k", "action": "auth"}),
            Auth(Credentials("k", "s")),
        )

    def test_subscribe_ignores_empty_and_nil_channels(self):
        """Empty lists and nil (Go) are ignored, even for channels the feed lacks."""
        self.assertEqual(
            STOCKS.parse({"trades": ["AAPL"], "quotes": None, "orderbooks": [], "news": None,
                          "pricing": None, "action": "subscribe"}),
            Change("subscribe", {"trades": ("AAPL",)}),
        )

    def test_channel_the_feed_lacks_is_410(self):
        """A non-empty list for a channel the endpoint does not offer is 410."""
        self.assertCode(STOCKS, {"action": "subscribe", "orderbooks": ["BTC/USD"]}, 410)
        self.assertCode(NEWS, {"action": "subscribe", "trades": ["AAPL"]}, 410)
        self.assertCode(OPTIONS, {"action": "subscribe", "bars": ["SPY"]}, 410)

    def test_syntax_errors_are_400(self):
        """Wrong types, bad symbols, unknown or missing actions are 400."""
        for message in [
            [], "x", {}, {"action": "dance"}, {"action": 5},
            {"action": "subscribe", "trades": "AAPL"},
            {"action": "subscribe", "trades": 5},
            {"action": "subscribe", "trades": [5]},
            {"action": "subscribe", "trades": ["AA PL"]},
            {"action": "subscribe", "trades": [""]},
            {"action": "auth", "key": 1, "secret": "s"},
        ]:
            self.assertCode(STOCKS, message, 400)

    def test_option_quote_star_is_413(self):
        """``quotes: ["*"]`` is refused on options."""
        self.assertCode(OPTIONS, {"action": "subscribe", "quotes": ["*"]}, 413)

    def test_stock_symbols_with_dots_and_crypto_pairs(self):
        """BRK.B and BTC/USD are well-formed symbols."""
        self.assertEqual(STOCKS.parse({"action": "subscribe", "trades": ["BRK.B"]}).channels,
                         {"trades": ("BRK.B",)})
        self.assertEqual(CRYPTO.parse({"action": "subscribe", "orderbooks": ["BTC/USD"]}).channels,
                         {"orderbooks": ("BTC/USD",)})


class AckTests(SynchronousTestCase):
    def test_stock_ack_mirrors_trades(self):
        """corrections and cancelErrors mirror trades; every key present, T first."""
        ack = STOCKS.ack({"trades": {"MSFT": None}, "bars": {"*": None}})
        self.assertEqual(list(ack)[0], "T")
        self.assertEqual(ack, {
            "T": "subscription", "trades": ["MSFT"], "quotes": [], "bars": ["*"],
            "updatedBars": [], "dailyBars": [], "statuses": [], "lulds": [],
            "corrections": ["MSFT"], "cancelErrors": ["MSFT"],
        })

    def test_crypto_and_news_key_sets(self):
        """Crypto and news acks carry their own key sets."""
        self.assertEqual(list(CRYPTO.ack({})), ["T", "trades", "quotes", "orderbooks", "bars",
                                                "updatedBars", "dailyBars"])
        self.assertEqual(NEWS.ack({"news": {"*": None}}), {"T": "subscription", "news": ["*"]})

    def test_error_texts(self):
        """Error messages carry Alpaca's exact text."""
        self.assertEqual(error(406), {"T": "error", "code": 406, "msg": "connection limit exceeded"})


class RoutingTests(SynchronousTestCase):
    def test_corrections_follow_trades(self):
        """c and x messages route on the trades channel."""
        self.assertEqual(STOCKS.routing({"T": "c", "S": "A"}), ("trades", ("A",)))
        self.assertEqual(STOCKS.routing({"T": "x", "S": "A"}), ("trades", ("A",)))
        self.assertEqual(STOCKS.routing({"T": "zz", "S": "A"}), (None, ()))

    def test_news_by_symbols(self):
        """News routes on every entry of ``symbols``."""
        self.assertEqual(NEWS.routing({"T": "n", "symbols": ["A", "B"]}), ("news", ("A", "B")))
        self.assertEqual(NEWS.routing({"T": "n", "symbols": []}), ("news", ()))


class PathTests(SynchronousTestCase):
    def test_paths(self):
        """Every documented and SDK-built path maps to its upstream endpoint."""
        cases = {
            "/v2/iex": ("stocks", "/v2/iex"),
            "//v2/sip/?x=1": ("stocks", "/v2/sip"),
            "/v2/delayed_sip": ("stocks", "/v2/delayed_sip"),
            "/": ("stocks", "/v2/iex"),
            "/iex": ("stocks", "/v2/iex"),
            "/v1beta1/boats": ("stocks", "/v1beta1/boats"),
            "/v1beta3/crypto/us": ("crypto", "/v1beta3/crypto/us"),
            "/v1beta1/crypto-perps/global": ("crypto", "/v1beta1/crypto-perps/global"),
            "/us-1": ("crypto", "/v1beta3/crypto/us-1"),
            "/v1beta1/news": ("news", "/v1beta1/news"),
            "/v1beta1/opra": ("options", "/v1beta1/opra"),
            "/indicative": ("options", "/v1beta1/indicative"),
        }
        for path, (kind, upstream) in cases.items():
            self.assertEqual(streams.resolve(path, "iex"), streams.Stream(kind, upstream), path)

    def test_unknown_paths(self):
        """Unknown paths resolve to nothing."""
        for path in ["/v3/iex", "/favicon.ico", "/v2/", "/v2/a/b"]:
            self.assertIsNone(streams.resolve(path, "iex"), path)


class CredentialTests(SynchronousTestCase):
    def test_secret_not_in_repr(self):
        """The secret never appears in a repr."""
        self.assertNotIn("hunter2", repr(Credentials("PK1", "hunter2")))

    def test_header_forms(self):
        """Key headers and HTTP Basic both give credentials."""
        self.assertEqual(
            header_credentials({"apca-api-key-id": "k", "apca-api-secret-key": "s"}),
            Credentials("k", "s"),
        )
        self.assertEqual(header_credentials({"authorization": "Basic azpzOnQ="}),
                         Credentials("k", "s:t"))
        self.assertIsNone(header_credentials({"authorization": "Basic !!"}))
