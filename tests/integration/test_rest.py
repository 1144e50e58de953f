"""Alpaca's REST APIs through the proxy's port, against the fake REST upstream."""

import json

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from alpaca_proxy.rest import is_data_path
from tests.support import KEY, SECRET, Harness, turn

AUTH = {b"APCA-API-KEY-ID": [KEY.encode()], b"APCA-API-SECRET-KEY": [SECRET.encode()]}


class PathTests(SynchronousTestCase):
    def test_data_and_trading_paths(self):
        """Market-data paths go to the data host, everything else to the trading host."""
        for path in ("/v2/stocks/AAPL/bars", "/v2/stocks/bars", "/v1beta3/crypto/us/bars",
                     "/v1beta1/news", "/v1beta1/options/bars", "/v1beta1/screener/stocks"):
            self.assertTrue(is_data_path(path), path)
        for path in ("/v2/account", "/v2/orders", "/v2/options/contracts", "/v2/clock"):
            self.assertFalse(is_data_path(path), path)


class RestTests(TestCase):
    timeout = 30

    def request(self, harness, method, path, headers=None, body=None):
        """One request on its own connection; fires with (status, headers, body)."""
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, pool=pool)
        merged = dict(AUTH)
        merged.update(headers or {})
        all_headers = Headers(merged)
        from twisted.web.client import FileBodyProducer
        from io import BytesIO

        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        sending = agent.request(method, b"http://127.0.0.1:%d%s" % (harness.port, path),
                                all_headers, producer)

        def read(response):
            return readBody(response).addCallback(
                lambda data: (response.code, response.headers, data))

        return sending.addCallback(read)

    @defer.inlineCallbacks
    def test_forwarded_as_sent_and_answered_as_upstream_answered(self):
        """Method, path, query, end-to-end headers go up; hop-by-hop ones do not; the
        status, rate-limit headers and body come back as upstream sent them."""
        harness = yield Harness(self).start()
        status, headers, body = yield self.request(
            harness, b"GET", b"/v2/assets?asset_class=us_equity",
            {b"X-Algo": [b"a1"], b"Connection": [b"close, X-Hop"], b"X-Hop": [b"1"]})
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)[0]["symbol"], "AAPL")
        self.assertEqual(headers.getRawHeaders(b"x-ratelimit-limit"), [b"200"])
        [(method, path, sent, _)] = harness.rest.requests
        self.assertEqual((method, path), ("GET", "/v2/assets?asset_class=us_equity"))
        self.assertEqual((sent["x-algo"], sent["apca-api-key-id"]), ("a1", KEY))
        self.assertNotIn("x-hop", sent)
        status, _, body = yield self.request(harness, b"GET", b"/v2/stocks/AAPL/bars")
        self.assertEqual((status, json.loads(body)["symbol"]), (200, "AAPL"))

    @defer.inlineCallbacks
    def test_wrong_pair_and_big_bodies_never_leave(self):
        """With accounts configured, a wrong pair gets Alpaca's 401 from the proxy; a body
        over 1 MiB gets 413; upstream sees neither."""
        harness = yield Harness(self).start()
        status, _, body = yield self.request(harness, b"GET", b"/v2/account",
                                             {b"APCA-API-SECRET-KEY": [b"wrong"]})
        self.assertEqual((status, json.loads(body)["code"]), (401, 40110000))
        status, _, _ = yield self.request(harness, b"POST", b"/v2/orders",
                                          body=b"x" * ((1 << 20) + 1))
        self.assertEqual(status, 413)
        self.assertEqual(harness.rest.requests, [])

    @defer.inlineCallbacks
    def test_spent_budget_waits_instead_of_earning_429(self):
        """Upstream allows 3 a window (of 5 s here): two more requests wait for the reset
        instead of reaching upstream, and are then answered; upstream never answered 429."""
        harness = yield Harness(self, rest_limit=3, rest_window=5).start()
        for _ in range(3):
            status, _, _ = yield self.request(harness, b"GET", b"/v2/clock")
            self.assertEqual(status, 200)
        answered = []
        waiting = [self.request(harness, b"GET", path).addCallback(
            lambda r: answered.append(r[0]) or r) for path in (b"/v2/account", b"/v2/positions")]
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(answered, [])
        self.assertEqual(len(harness.rest.requests), 3)
        harness.clock.advance(4)
        self.assertEqual(answered, [])
        harness.clock.advance(1.1)  # the window resets upstream
        results = yield defer.gatherResults(waiting)
        self.assertEqual([r[0] for r in results], [200, 200])
        self.assertEqual(len(harness.rest.requests), 5)

    @defer.inlineCallbacks
    def test_identical_gets_in_flight_go_up_once(self):
        """Three clients asking the same account for /v2/account at once: one request
        upstream, three identical answers; another pair's request is its own."""
        harness = yield Harness(self, accounts={KEY: SECRET, "PKOTHER": "other-secret"},
                                configured=False).start()
        harness.rest.hold = {"GET"}
        same = [self.request(harness, b"GET", b"/v2/account") for _ in range(3)]
        other = self.request(harness, b"GET", b"/v2/account", {
            b"APCA-API-KEY-ID": [b"PKOTHER"], b"APCA-API-SECRET-KEY": [b"other-secret"]})
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(len(harness.rest.requests), 2)
        harness.rest.release()
        answers = yield defer.gatherResults(same + [other])
        self.assertEqual({(status, body) for status, _, body in answers[:3]},
                         {(200, answers[0][2])})
        self.assertEqual(answers[3][0], 200)
        self.assertEqual(len(harness.rest.requests), 2)

    @defer.inlineCallbacks
    def test_short_cache_emptied_by_a_trade_update(self):
        """With --rest-cache-ms, a second GET /v2/account is answered from the cache; a
        trade update of the account (its trading stream held by the proxy) empties it."""
        harness = yield Harness(self, rest_settings={"rest_cache_ms": 5000}).start()
        trading = yield harness.connect(path="/stream")
        trading.send({"action": "auth", "key": KEY, "secret": SECRET})
        yield trading.next()
        trading.send({"action": "listen", "data": {"streams": ["trade_updates"]}})
        yield trading.next()
        yield harness.upstream.when(lambda: any(c.listening for c in harness.upstream.connections))
        for _ in range(2):
            self.assertEqual((yield self.request(harness, b"GET", b"/v2/account"))[0], 200)
        self.assertEqual(len(harness.rest.requests), 1)
        harness.upstream.trade_update({"event": "fill", "order": {"symbol": "AAPL"}})
        yield trading.next()
        yield self.request(harness, b"GET", b"/v2/account")
        self.assertEqual(len(harness.rest.requests), 2)
        harness.clock.advance(5.1)
        yield self.request(harness, b"GET", b"/v2/account")
        self.assertEqual(len(harness.rest.requests), 3)

    @defer.inlineCallbacks
    def test_queue_timeout_answers_429_locally(self):
        """Past --rest-queue-timeout a waiting request gets 429 with Retry-After from the
        proxy; it never left, so an SDK retrying it is harmless."""
        harness = yield Harness(self, rest_limit=1, rest_window=60).start()
        yield self.request(harness, b"GET", b"/v2/clock")
        waiting = self.request(harness, b"POST", b"/v2/orders", body=b'{"symbol":"AAPL"}')
        yield deferLater(reactor, 0.2, lambda: None)
        harness.clock.advance(10)
        status, headers, body = yield waiting
        self.assertEqual((status, json.loads(body)["code"]), (429, 42910000))
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"50"])
        self.assertEqual([r[0] for r in harness.rest.requests], ["GET"])

    @defer.inlineCallbacks
    def test_unanswered_order_gets_502_and_goes_up_once(self):
        """An order upstream does not answer in 30 s: 502 saying the outcome is unknown
        (SDKs retry 504, not 502); a GET gets 504. Nothing is sent twice."""
        harness = yield Harness(self).start()
        harness.rest.hold = {"POST", "GET"}
        order = self.request(harness, b"POST", b"/v2/orders",
                             body=b'{"symbol":"AAPL","qty":"1","client_order_id":"algo-1"}')
        read = self.request(harness, b"GET", b"/v2/account")
        yield deferLater(reactor, 0.2, lambda: None)
        harness.clock.advance(30)
        status, _, body = yield order
        self.assertEqual(status, 502)
        self.assertIn("outcome of this POST is unknown", json.loads(body)["message"])
        self.assertEqual((yield read)[0], 504)
        yield turn()
        self.assertEqual(sorted(r[0] for r in harness.rest.requests), ["GET", "POST"])

    @defer.inlineCallbacks
    def test_requests_in_flight_are_bounded(self):
        """Past the cap on requests on their way to Alpaca, another gets 429 at once (it
        never left, so a retry is harmless)."""
        from alpaca_proxy import rest

        self.patch(rest, "MAX_IN_FLIGHT", 1)
        harness = yield Harness(self).start()
        harness.rest.hold = {"GET"}
        first = self.request(harness, b"GET", b"/v2/account")
        yield deferLater(reactor, 0.2, lambda: None)
        status, _, _ = yield self.request(harness, b"GET", b"/v2/clock")
        self.assertEqual(status, 429)
        harness.rest.release()
        self.assertEqual((yield first)[0], 200)
        self.assertEqual(len(harness.rest.requests), 1)

    @defer.inlineCallbacks
    def test_upstream_429_is_passed_on(self):
        """A 429 from upstream itself reaches the client as upstream sent it."""
        harness = yield Harness(self, rest_limit=0).start()
        status, _, body = yield self.request(harness, b"GET", b"/v2/account")
        self.assertEqual((status, json.loads(body)["message"]), (429, "rate limit exceeded"))


class BudgetTests(SynchronousTestCase):
    def test_waiters_served_round_robin_between_connections(self):
        """With one request a window, waiting connections take turns; each in its order."""
        from twisted.internet.task import Clock

        from alpaca_proxy.rest import Budget

        clock = Clock()
        budget = Budget(clock, limit=1)
        granted = []
        for connection, name in (("A", "a1"), ("A", "a2"), ("A", "a3"), ("B", "b1")):
            budget.acquire(connection, timeout=600).addCallback(
                lambda _, name=name: granted.append(name))
        self.assertEqual(granted, ["a1"])
        for _ in range(3):
            clock.advance(60.1)
        self.assertEqual(granted, ["a1", "a2", "b1", "a3"])


class SdkRestTests(TestCase):
    """Unmodified SDK REST clients with the proxy as their base URL."""

    timeout = 120

    def sdk_client(self, harness, sdk, scenario, python=None):
        from twisted.internet.utils import getProcessOutputAndValue

        from tests import sdk_env

        return getProcessOutputAndValue(
            python or sdk_env.python(),
            [sdk_env.script("rest_client.py"), sdk, "http://127.0.0.1:%d" % (harness.port,),
             KEY, SECRET, scenario], env={"APCA_RETRY_WAIT": "0"}, reactor=reactor)

    def calls(self, result):
        out, err, code = result
        self.assertEqual(code, 0, (out + err).decode()[-3000:])
        return {line["call"]: line for line in map(json.loads, out.decode().splitlines())}

    def keep_time(self, harness, step=0.5):
        """Let the proxy's clock follow real time (budget windows) while SDKs run."""
        from twisted.internet.task import LoopingCall

        ticking = LoopingCall(harness.clock.advance, step)
        ticking.start(0.1, now=False)
        self.addCleanup(ticking.stop)

    @defer.inlineCallbacks
    def test_pylivetrader_and_alpaca_py_calls_at_once_within_one_budget(self):
        """alpaca-trade-api 1.5 making pylivetrader's calls and alpaca-py making its own,
        at once on one account whose budget is smaller than both need: every call is
        answered as upstream answered it, none with 429, and upstream never said 429."""
        from tests import sdk_env

        # The proxy's clock runs ahead of real time (windows pass quickly); the queue
        # timeout is raised so a slow machine cannot turn a wait into a 429.
        harness = yield Harness(self, rest_limit=6, rest_window=2,
                                rest_settings={"rest_queue_timeout": 600}).start()
        self.keep_time(harness)
        py, ata = yield defer.gatherResults([
            self.sdk_client(harness, "alpaca-py", "calls"),
            self.sdk_client(harness, "alpaca-trade-api", "calls", python=sdk_env.python("ata15"))])
        py, ata = self.calls(py), self.calls(ata)
        self.assertEqual({c: r for c, r in py.items() if not r["ok"]}, {})
        self.assertEqual({c: r for c, r in ata.items() if not r["ok"]}, {})
        self.assertEqual(py["get_account"]["value"], "AccountStatus.ACTIVE")
        self.assertEqual(py["get_stock_bars"]["value"], "10.5")
        self.assertEqual(ata["list_assets"]["value"], ["AAPL"])
        self.assertEqual(ata["get_order_by_client_order_id"]["value"], "AAPL")
        self.assertEqual(harness.rest.rejected, 0)
        self.assertGreater(len(harness.rest.requests), 6)

    @defer.inlineCallbacks
    def test_alpaca_trade_api_3_2(self):
        """alpaca-trade-api 3.2's REST with base_url at the proxy."""
        harness = yield Harness(self).start()
        calls = self.calls((yield self.sdk_client(harness, "alpaca-trade-api", "calls")))
        self.assertEqual([c for c, r in calls.items() if not r["ok"]], [])

    @defer.inlineCallbacks
    def check_order_sent_once(self, sdk, python=None):
        harness = yield Harness(self).start()
        harness.rest.hold = {"POST"}
        run = self.sdk_client(harness, sdk, "order", python)
        yield harness.rest_posted()
        harness.clock.advance(30)
        calls = self.calls((yield run))
        self.assertFalse(calls["submit_order"]["ok"])
        self.assertIn("outcome", calls["submit_order"]["error"])
        yield deferLater(reactor, 1.0, lambda: None)  # room for a retry, if one came
        self.assertEqual([r[0] for r in harness.rest.requests], ["POST"])

    def test_timed_out_order_alpaca_py(self):
        """alpaca-py: an order Alpaca does not answer gets 502, is not retried, went up once."""
        return self.check_order_sent_once("alpaca-py")

    def test_timed_out_order_alpaca_trade_api(self):
        """alpaca-trade-api 3.2: the same (it retries 429 and 504, not 502)."""
        return self.check_order_sent_once("alpaca-trade-api")

    @defer.inlineCallbacks
    def test_js_sdk_3_rest_with_base_url(self):
        """The JS SDK 3.x's REST calls with baseUrl at the proxy (getAccount was a 426)."""
        import os
        import shutil

        from twisted.internet.utils import getProcessOutputAndValue

        from tests import sdk_env

        modules = sdk_env.node_modules()
        node = shutil.which("node")
        self.assertIsNotNone(node, "node is not installed")
        harness = yield Harness(self).start()
        out, err, code = yield getProcessOutputAndValue(
            node, [sdk_env.js_script("rest_client.js"), "http://127.0.0.1:%d" % harness.port,
                   KEY, SECRET],
            env={"NODE_PATH": modules, "PATH": os.environ.get("PATH", "")}, reactor=reactor)
        self.assertEqual(code, 0, (out + err).decode()[-2000:])
        self.assertEqual(json.loads(out), {"status": "ACTIVE", "is_open": True})
