"""Polygon/Massive through the proxy: real Autobahn clients, the fake Polygon cluster."""

import json

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from alpaca_proxy.upstream.session import ACK_DEADLINE
from tests.support import POLYGON_KEY, Harness, RecordingClient, logged, turn


def acks(action, *params):
    verb = "subscribed to" if action == "subscribe" else "unsubscribed to"
    return [{"ev": "status", "status": "success", "message": "%s: %s" % (verb, p)}
            for p in params]


def trade(symbol, price):
    return {"ev": "T", "sym": symbol, "x": 4, "i": "7", "z": 3, "p": price, "s": 100,
            "c": [12], "t": 1714658587120, "q": 9}


def quote(symbol, price):
    return {"ev": "Q", "sym": symbol, "bx": 11, "bp": price, "bs": 2, "ax": 12,
            "ap": price + 0.01, "as": 3, "c": 0, "t": 1714658587121, "z": 3, "q": 10}


class PolygonProxyTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.harness = yield Harness(self).start()

    def subscribed(self, *params):
        """Fires once the fake cluster holds every one of these params."""
        def holds():
            return any(set(params) <= c.subscriptions for c in self.harness.polygon.authenticated())
        return self.harness.polygon.when(holds)

    @defer.inlineCallbacks
    def test_two_clients_share_one_upstream(self):
        """Each client gets only its own subscriptions, acknowledged per parameter."""
        h = self.harness
        a = yield h.polygon_login()
        b = yield h.polygon_login()
        a.send({"action": "subscribe", "params": "T.MSFT,Q.MSFT"})
        self.assertEqual((yield a.next()), acks("subscribe", "T.MSFT", "Q.MSFT"))
        b.send({"action": "subscribe", "params": "T.AAPL"})
        self.assertEqual((yield b.next()), acks("subscribe", "T.AAPL"))
        self.assertEqual(len(h.polygon.authenticated("stocks")), 1)
        self.assertEqual(h.polygon.handshakes, 1)
        h.polygon.inject([trade("MSFT", 412.5), trade("AAPL", 190.25), quote("MSFT", 412.4),
                          quote("AAPL", 190.2)])
        self.assertEqual((yield a.next()), [trade("MSFT", 412.5), quote("MSFT", 412.4)])
        self.assertEqual((yield b.next()), [trade("AAPL", 190.25)])
        self.assertFalse(any(a.binary_flags + b.binary_flags), "Polygon frames are text")

    @defer.inlineCallbacks
    def test_wildcard_and_once_per_client(self):
        """T.* gets every trade; a trade matching T.* and T.MSFT arrives once."""
        h = self.harness
        a = yield h.polygon_login()
        a.send({"action": "subscribe", "params": "T.*,T.MSFT"})
        self.assertEqual((yield a.next()), acks("subscribe", "T.*", "T.MSFT"))
        h.polygon.inject([trade("MSFT", 1.0), trade("NVDA", 2.0), quote("NVDA", 2.0)])
        self.assertEqual((yield a.next()), [trade("MSFT", 1.0), trade("NVDA", 2.0)])

    @defer.inlineCallbacks
    def test_union_upstream_and_unsubscribe_what_nobody_wants(self):
        h = self.harness
        a = yield h.polygon_login()
        b = yield h.polygon_login()
        a.send({"action": "subscribe", "params": "T.MSFT"})
        yield a.next()
        b.send({"action": "subscribe", "params": "T.MSFT,T.AAPL"})
        yield b.next()
        b.send({"action": "unsubscribe", "params": "T.MSFT,T.AAPL"})
        self.assertEqual((yield b.next()), acks("unsubscribe", "T.MSFT", "T.AAPL"))
        yield h.polygon.when(lambda: h.polygon.authenticated()[0].subscriptions == {"T.MSFT"})
        self.assertEqual(h.polygon_requests(), [
            {"action": "subscribe", "params": "T.MSFT"},
            {"action": "subscribe", "params": "T.AAPL"},
            {"action": "unsubscribe", "params": "T.AAPL"}])
        h.polygon.inject([trade("MSFT", 3.0)])
        self.assertEqual((yield a.next()), [trade("MSFT", 3.0)])
        a.send({"action": "unsubscribe", "params": "T.MSFT"})
        self.assertEqual((yield a.next()), acks("unsubscribe", "T.MSFT"))
        yield h.polygon.when(lambda: not h.polygon.authenticated()[0].subscriptions)

    @defer.inlineCallbacks
    def test_crypto_prefixed_and_bare_pairs(self):
        """XT.X:BTC-USD and XT.BTC-USD both match events whose pair is BTC-USD."""
        h = self.harness
        a = yield h.polygon_login("crypto")
        b = yield h.polygon_login("crypto")
        a.send({"action": "subscribe", "params": "XT.X:BTC-USD"})
        yield a.next()
        b.send({"action": "subscribe", "params": "XT.BTC-USD"})
        yield b.next()
        event = {"ev": "XT", "pair": "BTC-USD", "p": 60000.5, "t": 1, "s": 0.1, "c": [1],
                 "i": "1", "x": 1, "r": 2}
        h.polygon.inject([dict(event, pair="X:BTC-USD")])  # reaches the X: subscription
        h.polygon.inject([event])
        self.assertEqual((yield b.next()), [event])
        self.assertEqual((yield a.next()), [dict(event, pair="X:BTC-USD")])
        self.assertEqual((yield a.next()), [event])

    @defer.inlineCallbacks
    def test_auth_rules(self):
        """Wrong key: auth_failed and no upstream; requests before auth: an error status."""
        h = self.harness
        client = yield h.connect("/stocks")
        yield client.next()
        client.send({"action": "subscribe", "params": "T.MSFT"})
        reply = yield client.next()
        self.assertEqual((reply[0]["ev"], reply[0]["status"]), ("status", "error"))
        client.send({"action": "auth", "params": "not-the-key"})
        self.assertEqual((yield client.next()), [
            {"ev": "status", "status": "auth_failed", "message": "authentication failed"}])
        self.assertEqual(h.polygon.handshakes, 0)
        client.send({"action": "auth", "params": POLYGON_KEY})
        self.assertEqual((yield client.next())[0]["status"], "auth_success")

    @defer.inlineCallbacks
    def test_auth_timeout(self):
        h = self.harness
        client = yield h.connect("/forex")
        yield client.next()
        h.clock.advance(10)
        self.assertEqual((yield client.next()), [{
            "ev": "status", "status": "auth_timeout",
            "message": "No authentication request received."}])
        yield client.closed

    @defer.inlineCallbacks
    def test_bad_input_is_answered_and_harms_nobody(self):
        h = self.harness
        good = yield h.polygon_login()
        good.send({"action": "subscribe", "params": "T.MSFT"})
        yield good.next()
        bad = yield h.polygon_login()
        for payload in (b"{not json", b'{"action":"subscribe","params":"MSFT"}', b"[]",
                        b'{"action":"jump"}'):
            bad.sendMessage(payload)
            reply = yield bad.next()
            self.assertEqual(reply[0]["status"], "error", payload)
        h.polygon.inject([trade("MSFT", 5.0)])
        self.assertEqual((yield good.next()), [trade("MSFT", 5.0)])

    @defer.inlineCallbacks
    def test_markets_are_separate_upstreams(self):
        h = self.harness
        stocks = yield h.polygon_login("stocks")
        indices = yield h.polygon_login("indices")
        stocks.send({"action": "subscribe", "params": "T.MSFT"})
        indices.send({"action": "subscribe", "params": "V.I:SPX"})
        yield stocks.next()
        yield indices.next()
        self.assertEqual(sorted(c.market for c in h.polygon.authenticated()),
                         ["indices", "stocks"])
        h.polygon.inject([{"ev": "V", "T": "I:SPX", "val": 5000.5, "t": 1}], "indices")
        self.assertEqual((yield indices.next()), [{"ev": "V", "T": "I:SPX", "val": 5000.5,
                                                   "t": 1}])

    @defer.inlineCallbacks
    def test_evicted_upstream_comes_back_and_resubscribes(self):
        """Another program takes the key's slot: the proxy backs off, takes it back, and
        resubscribes the union; its clients stay connected throughout."""
        h = self.harness
        client = yield h.polygon_login()
        client.send({"action": "subscribe", "params": "T.MSFT,Q.*"})
        yield client.next()
        session = h.pool.sessions[0]
        lost = session.next_disconnect()
        warned = logged(self, lambda e: "another connection uses this API key" in
                        (e.get("log_format") or ""))
        intruder = yield self.raw_polygon_client("/stocks")
        intruder.send({"action": "auth", "params": POLYGON_KEY})
        yield lost
        yield warned
        self.assertEqual(h.polygon.authenticated(), [c for c in h.polygon.connections
                                                     if c.key and c is not session])
        yield turn()
        h.clock.advance(60)  # the backoff
        yield self.subscribed("T.MSFT", "Q.*")
        self.assertEqual(client.state, client.STATE_OPEN)
        h.polygon.inject([trade("MSFT", 9.0)])
        self.assertEqual((yield client.next()), [trade("MSFT", 9.0)])
        self.assertGreaterEqual(session.link.retry_delay(1), 1.0)  # evicted once: backs off more

    @defer.inlineCallbacks
    def test_refused_while_another_holds_the_slot(self):
        """A cluster that refuses the newer connection: the proxy keeps retrying with
        backoff, its (locally verified) client is served once the slot frees."""
        h = self.harness
        h.polygon.policy = "refuse"
        intruder = yield self.raw_polygon_client("/stocks")
        intruder.send({"action": "auth", "params": POLYGON_KEY})
        yield intruder.next()
        refused = h.polygon.when(lambda: h.polygon.handshakes >= 2 and len(
            h.polygon.connections) == 1)
        client = yield h.connect("/stocks")
        yield client.next()
        client.send({"action": "auth", "params": POLYGON_KEY})
        yield refused
        from alpaca_proxy.upstream.pool import VERDICT_WAIT
        h.clock.advance(VERDICT_WAIT)
        self.assertEqual((yield client.next())[0]["status"], "auth_success")
        client.send({"action": "subscribe", "params": "T.MSFT"})
        self.assertEqual((yield client.next()), acks("subscribe", "T.MSFT"))
        intruder.sendClose()
        yield intruder.closed
        h.clock.advance(60)
        yield self.subscribed("T.MSFT")

    @defer.inlineCallbacks
    def raw_polygon_client(self, path):
        """A client straight to the fake cluster (another program using the same key)."""
        url = "ws://127.0.0.1:%d%s" % (self.harness.polygon_port.getHost().port, path)
        factory = WebSocketClientFactory(url)
        factory.protocol = RecordingClient
        factory.opened, factory.msgpack, factory.on_open = defer.Deferred(), False, None
        yield TCP4ClientEndpoint(reactor, "127.0.0.1",
                                 self.harness.polygon_port.getHost().port).connect(factory)
        client = yield factory.opened
        self.harness.clients.append(client)
        yield client.next()
        return client

    @defer.inlineCallbacks
    def test_silent_upstream_does_not_keep_clients_waiting(self):
        h = self.harness
        h.polygon.ignore_requests = True
        client = yield h.polygon_login()
        client.send({"action": "subscribe", "params": "T.MSFT"})
        yield h.polygon.when(lambda: h.polygon_requests())
        h.clock.advance(ACK_DEADLINE)
        self.assertEqual((yield client.next()), acks("subscribe", "T.MSFT"))

    @defer.inlineCallbacks
    def test_key_never_logged(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = self.harness
        client = yield h.polygon_login()
        client.send({"action": "subscribe", "params": "T.MSFT"})
        yield client.next()
        wrong = yield h.connect("/stocks")
        yield wrong.next()
        wrong.send({"action": "auth", "params": POLYGON_KEY + "x"})
        yield wrong.next()
        text = json.dumps([{k: repr(v) for k, v in e.items()} for e in events])
        self.assertIn("polygon-", text)  # the fingerprint is what logs show
        self.assertNotIn(POLYGON_KEY, text)


class PolygonModeTests(TestCase):
    @defer.inlineCallbacks
    def test_root_serves_polygon_stocks_and_alpaca_paths_still_work(self):
        h = yield Harness(self, polygon_root="stocks").start()
        poly = yield h.polygon_login(path="/")
        poly.send({"action": "subscribe", "params": "T.MSFT"})
        yield poly.next()
        alpaca = yield h.login("/v2/iex")
        alpaca.send({"action": "subscribe", "trades": ["MSFT"]})
        yield alpaca.next()
        h.polygon.inject([trade("MSFT", 1.5)])
        self.assertEqual((yield poly.next()), [trade("MSFT", 1.5)])
        self.assertEqual([c.market for c in h.polygon.authenticated()], ["stocks"])

    @defer.inlineCallbacks
    def test_unconfigured_keys_are_judged_upstream(self):
        """Without a configured key, the client's key opens the upstream, which judges it."""
        h = yield Harness(self, polygon_configured=False).start()
        client = yield h.connect("/stocks")
        yield client.next()
        client.send({"action": "auth", "params": "wrong"})
        self.assertEqual((yield client.next())[0]["status"], "auth_failed")
        good = yield h.polygon_login()
        good.send({"action": "subscribe", "params": "Q.AAPL"})
        self.assertEqual((yield good.next()), acks("subscribe", "Q.AAPL"))
