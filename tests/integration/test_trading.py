"""The trading stream through the proxy, and the Site's plain-HTTP answers."""

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from tests.support import KEY, SECRET, Harness

AUTHORIZED = {"stream": "authorization", "data": {"status": "authorized",
                                                  "action": "authenticate"}}
FILL = {"event": "fill", "order": {"id": "0f3e", "client_order_id": "algoA-17", "symbol": "MSFT",
                                   "qty": "10", "filled_qty": "10", "status": "filled"},
        "price": "401.49", "qty": "10", "position_qty": "10",
        "timestamp": "2024-05-02T14:03:07.551Z"}


class TradingStreamTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def setUp(self):
        self.harness = yield Harness(self).start()
        self.upstream = self.harness.upstream

    @defer.inlineCallbacks
    def connect(self, path="/stream", legacy=True, secret=SECRET):
        client = yield self.harness.connect(path=path)
        if legacy:
            client.send({"action": "authenticate",
                         "data": {"key_id": KEY, "secret_key": secret}})
        else:
            client.send({"action": "auth", "key": KEY, "secret": secret})
        return client

    @defer.inlineCallbacks
    def test_events_reach_every_listener_once_over_one_upstream(self):
        """Both auth forms; listen replaces the set; each event to each listener, as sent."""
        a = yield self.connect()
        self.assertEqual((yield a.next()), AUTHORIZED)
        b = yield self.connect(path="/stream/", legacy=False)
        self.assertEqual((yield b.next()), AUTHORIZED)
        quiet = yield self.connect()
        yield quiet.next()
        for client in (a, b):
            client.send({"action": "listen", "data": {"streams": ["trade_updates", "nope"]}})
            self.assertEqual((yield client.next()),
                             {"stream": "listening", "data": {"streams": ["trade_updates"]}})
        yield self.upstream.when(lambda: any(c.listening for c in self.upstream.connections))
        self.upstream.trade_update(FILL)
        for client in (a, b):
            self.assertEqual((yield client.next()), {"stream": "trade_updates", "data": FILL})
            self.assertEqual(client.binary_flags[-1], True)
        b.send({"action": "listen", "data": {"streams": []}})
        self.assertEqual((yield b.next()), {"stream": "listening", "data": {"streams": []}})
        self.upstream.trade_update(dict(FILL, event="canceled"), binary=False)
        self.assertEqual((yield a.next())["data"]["event"], "canceled")
        self.assertEqual(a.binary_flags[-1], False)
        self.assertEqual(list(b.frames) + list(quiet.frames), [])
        self.assertEqual(len([c for c in self.upstream.connections if c.kind == "trading"]), 1)
        [upstream_auth] = [m for p, m in self.upstream.received if p == "/stream"][:1]
        self.assertEqual(upstream_auth, {"action": "auth", "key": KEY, "secret": SECRET})

    @defer.inlineCallbacks
    def test_refusals(self):
        """Wrong secret: unauthorized; listen before auth: unauthorized for listen."""
        client = yield self.harness.connect(path="/stream")
        client.send({"action": "listen", "data": {"streams": ["trade_updates"]}})
        self.assertEqual((yield client.next()), {"stream": "authorization", "data": {
            "status": "unauthorized", "action": "listen"}})
        client.send({"action": "authenticate", "data": {"key_id": KEY, "secret_key": "bad"}})
        self.assertEqual((yield client.next()), {"stream": "authorization", "data": {
            "status": "unauthorized", "action": "authenticate",
            "message": "access key verification failed"}})
        client.sendMessage(b"{oops", isBinary=False)
        self.assertEqual((yield client.next())["stream"], "error")


class PlainHttpTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_plain_http_without_rest_is_503(self):
        """Without REST URLs (as under --simulate), a plain request on any path that is not
        the proxy's own gets 503 saying REST is not simulated; a websocket path upgrades."""
        harness = yield Harness(self, rest=False).start()
        agent = Agent(reactor)
        for path in ("/v2/iex", "/stream", "/v2/account"):
            response = yield agent.request(b"GET", b"http://127.0.0.1:%d%s" % (
                harness.port, path.encode()))
            body = yield readBody(response)
            self.assertEqual(response.code, 503, path)
            self.assertIn(b"not simulated", body)
