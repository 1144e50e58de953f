"""Polygon's protocol as pure translation: requests, acknowledgements, routing, streams."""

from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy import streams
from alpaca_proxy.dialects import polygon
from alpaca_proxy.subscriptions import Change


class ParseTests(SynchronousTestCase):
    def test_auth(self):
        """The key is the secret; the public half is a stable fingerprint without it."""
        request = polygon.parse({"action": "auth", "params": " abc123 "})
        self.assertEqual(request.credentials.secret, "abc123")
        self.assertEqual(request.credentials, polygon.credentials_for("abc123"))
        self.assertNotIn("abc123", request.credentials.key)
        self.assertNotIn("abc123", repr(request.credentials))
        self.assertNotEqual(request.credentials.key, polygon.credentials_for("abc124").key)

    def test_subscribe_params(self):
        """Comma-joined EV.SYMBOL, spaces and duplicates tolerated, order kept."""
        request = polygon.parse({"params": "T.MSFT, Q.*,AM.*,T.MSFT,,XT.X:BTC-USD",
                                 "action": "subscribe"})
        self.assertEqual(request.change, Change("subscribe", {
            "T": ("MSFT",), "Q": ("*",), "AM": ("*",), "XT": ("X:BTC-USD",)}))
        self.assertEqual(request.params, ("T.MSFT", "Q.*", "AM.*", "XT.X:BTC-USD"))

    def test_symbols_keep_their_dots(self):
        """Only the first dot separates the event type (BRK.A is one symbol)."""
        request = polygon.parse({"action": "unsubscribe", "params": "T.BRK.A"})
        self.assertEqual(request.change, Change("unsubscribe", {"T": ("BRK.A",)}))

    def test_empty_params(self):
        request = polygon.parse({"action": "subscribe", "params": ""})
        self.assertEqual((request.change.channels, request.params), ({}, ()))

    def test_refusals(self):
        """Bad messages are refused with a status, never an exception of another kind."""
        for message in ([], "x", {"action": "subscribe", "params": ["T.MSFT"]},
                        {"action": "subscribe", "params": "MSFT"},
                        {"action": "subscribe", "params": "t.MSFT"},
                        {"action": "subscribe", "params": "T."},
                        {"action": "subscribe", "params": "T.MS*"},
                        {"action": "dance"}, {"action": "auth"},
                        {"action": "auth", "params": 7}):
            with self.assertRaises(polygon.PolygonError, msg=message) as caught:
                polygon.parse(message)
            self.assertEqual(caught.exception.reply["ev"], "status")
            self.assertIn(caught.exception.reply["status"], ("error", "auth_failed"))


class AcknowledgementTests(SynchronousTestCase):
    def test_one_status_per_param(self):
        self.assertEqual(polygon.acknowledgements("subscribe", ["T.MSFT", "Q.*"]), [
            {"ev": "status", "status": "success", "message": "subscribed to: T.MSFT"},
            {"ev": "status", "status": "success", "message": "subscribed to: Q.*"}])
        self.assertEqual(polygon.acknowledgements("unsubscribe", ["T.MSFT"]), [
            {"ev": "status", "status": "success", "message": "unsubscribed to: T.MSFT"}])

    def test_upstream_acknowledgements(self):
        """One param per status, or several comma-joined; other statuses are not acks."""
        self.assertEqual(polygon.acknowledged(
            {"ev": "status", "status": "success", "message": "subscribed to: T.MSFT"}),
            ("subscribe", [("T", "MSFT")]))
        self.assertEqual(polygon.acknowledged(
            {"ev": "status", "status": "success", "message": "unsubscribed to: T.A,Q.*"}),
            ("unsubscribe", [("T", "A"), ("Q", "*")]))
        for message in ({"ev": "status", "status": "success", "message": "authenticated"},
                        {"ev": "status", "status": "error", "message": "subscribed to: T.A"}):
            self.assertIsNone(polygon.acknowledged(message))

    def test_auth_success_both_forms(self):
        self.assertTrue(polygon.is_auth_success(polygon.AUTH_SUCCESS))
        self.assertTrue(polygon.is_auth_success(polygon.status("success", "authenticated")))
        self.assertFalse(polygon.is_auth_success(polygon.AUTH_FAILED))


class RoutingTests(SynchronousTestCase):
    def test_symbol_field_per_event(self):
        """sym, pair, T or p (a string only), as each event type names its instrument."""
        stocks, crypto = polygon.DIALECTS["stocks"], polygon.DIALECTS["crypto"]
        forex, indices = polygon.DIALECTS["forex"], polygon.DIALECTS["indices"]
        self.assertEqual(stocks.routing({"ev": "T", "sym": "MSFT", "p": 412.5}), ("T", ("MSFT",)))
        self.assertEqual(stocks.routing({"ev": "LULD", "T": "MSFT", "h": 1.0}),
                         ("LULD", ("MSFT",)))
        self.assertEqual(crypto.routing({"ev": "XT", "pair": "BTC-USD", "p": 6e4}),
                         ("XT", ("BTC-USD", "X:BTC-USD")))
        self.assertEqual(forex.routing({"ev": "C", "p": "EUR/USD", "a": 1.1}),
                         ("C", ("EUR/USD", "C:EUR/USD")))
        self.assertEqual(indices.routing({"ev": "V", "T": "I:SPX", "val": 5e3}),
                         ("V", ("I:SPX",)))
        self.assertEqual(stocks.routing({"ev": "T", "p": 1.0}), ("T", ()))  # wildcard only
        self.assertEqual(stocks.routing({"ev": "status", "status": "success"}), (None, ()))
        self.assertEqual(stocks.routing({"sym": "MSFT"}), (None, ()))

    def test_request(self):
        self.assertEqual(polygon.DIALECTS["stocks"].request("subscribe", [("Q", "*"), ("T", "A")]),
                         {"action": "subscribe", "params": "Q.*,T.A"})


class PathTests(SynchronousTestCase):
    def test_markets(self):
        for market in ("stocks", "options", "forex", "crypto", "indices", "futures/cme"):
            self.assertEqual(streams.resolve_polygon("/" + market + "/?x=1"),
                             streams.Stream(streams.POLYGON, "/" + market))
        self.assertIsNone(streams.resolve_polygon("/v2/iex"))
        self.assertIsNone(streams.resolve_polygon("/bonds"))

    def test_root_only_in_polygon_mode(self):
        self.assertIsNone(streams.resolve_polygon("/"))
        self.assertEqual(streams.resolve_polygon("/", "stocks"),
                         streams.Stream(streams.POLYGON, "/stocks"))
