"""The plain-HTTP side of the port: status page, status.json, metrics, healthz."""

import json

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from tests.support import SECRET, Harness, turn


class WebTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def setUp(self):
        self.harness = yield Harness(self).start()
        self.agent = Agent(reactor)

    @defer.inlineCallbacks
    def get(self, path):
        response = yield self.agent.request(
            b"GET", b"http://127.0.0.1:%d%s" % (self.harness.port, path.encode()))
        body = yield readBody(response)
        return response.code, response.headers.getRawHeaders(b"content-type")[0], body

    @defer.inlineCallbacks
    def two_clients(self):
        a = yield self.harness.login()
        b = yield self.harness.login(msgpack_encoding=True)
        a.send({"action": "subscribe", "trades": ["AAPL", "MSFT"]})
        yield a.next()
        b.send({"action": "subscribe", "quotes": ["AAPL"]})
        yield b.next()
        self.harness.upstream.inject([{"T": "t", "S": "AAPL", "p": 1.0}, {"T": "q", "S": "AAPL"}])
        yield a.next()
        yield b.next()
        return a, b

    @defer.inlineCallbacks
    def test_status_json_shows_upstreams_and_clients(self):
        """status.json lists the upstream (key id, never secret) and each client's figures."""
        yield self.two_clients()
        code, kind, body = yield self.get("/status.json")
        self.assertEqual((code, kind), (200, b"application/json"))
        status = json.loads(body)
        [upstream] = status["upstreams"]
        self.assertEqual((upstream["endpoint"], upstream["account"], upstream["state"],
                          upstream["clients"], upstream["subscriptions"], upstream["messages_in"]),
                         ("/v2/iex", "PKTESTKEY", "ready", 2, 3, 2))
        clients = sorted((c["encoding"], c["subscriptions"], c["messages_sent"])
                         for c in status["clients"])
        self.assertEqual(clients, [("json", 2, 1), ("msgpack", 1, 1)])
        self.assertTrue(status["healthy"])
        self.assertEqual(sum(status["messages_per_second"]), 0)  # the clock has not moved
        self.assertNotIn(SECRET.encode(), body)

    @defer.inlineCallbacks
    def test_status_page_is_self_contained_html(self):
        """/ without an upgrade is the status page, with no external resource."""
        code, kind, body = yield self.get("/")
        self.assertEqual((code, kind), (200, b"text/html; charset=utf-8"))
        self.assertIn(b"status.json", body)
        self.assertNotIn(b"http://", body.replace(b"http://www.w3.org", b""))
        self.assertNotIn(b"https://", body)

    @defer.inlineCallbacks
    def test_metrics(self):
        """/metrics speaks Prometheus with conventional names, and no secret."""
        yield self.two_clients()
        code, kind, body = yield self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"text/plain", kind)
        text = body.decode()
        for line in [
            'alpaca_proxy_upstream_up{account="PKTESTKEY",endpoint="/v2/iex"} 1.0',
            'alpaca_proxy_upstream_messages_total{account="PKTESTKEY",endpoint="/v2/iex"} 2.0',
            'alpaca_proxy_client_messages_total{account="PKTESTKEY",endpoint="/v2/iex"} 2.0',
            'alpaca_proxy_clients{endpoint="/v2/iex"} 2.0',
            'alpaca_proxy_upstream_subscriptions{account="PKTESTKEY",endpoint="/v2/iex"} 3.0',
            "alpaca_proxy_slow_client_drops_total 0.0",
        ]:
            self.assertIn(line, text)
        self.assertNotIn(SECRET, text)

    @defer.inlineCallbacks
    def test_healthz_turns_503_when_clients_lose_upstream_past_the_grace(self):
        """200 while serving; 503 once an endpoint with clients is without upstream > 60 s."""
        yield self.two_clients()
        self.assertEqual((yield self.get("/healthz"))[0], 200)
        self.harness.upstream.refuse_handshake = 503
        lost = self.harness.pool.sessions[0].next_disconnect()
        self.harness.upstream.authenticated()[0].drop()
        yield lost
        yield turn()
        self.harness.clock.advance(59)
        self.assertEqual((yield self.get("/healthz"))[0], 200)
        self.harness.clock.advance(2)
        code, _, body = yield self.get("/healthz")
        self.assertEqual(code, 503)
        self.assertTrue(body.startswith(b"upstream down\n  /v2/iex (PKTESTKEY): "), body)
        status = json.loads((yield self.get("/status.json"))[2])
        self.assertFalse(status["healthy"])
