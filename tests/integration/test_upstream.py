"""Upstream faults: backoff, 406 after reconnect, fatal auth errors (real sockets, Clock time)."""

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.support import KEY, Harness, logged, turn


@defer.inlineCallbacks
def subscribed(testcase, **harness_options):
    """On ``testcase``: a proxy, its fake upstream, and one client subscribed to AAPL trades."""
    testcase.harness = yield Harness(testcase, **harness_options).start()
    testcase.upstream = testcase.harness.upstream
    testcase.client = yield testcase.harness.login()
    testcase.client.send({"action": "subscribe", "trades": ["AAPL"]})
    yield testcase.client.next()
    testcase.session = testcase.harness.pool.sessions[0]


def retry_delays(clock):
    """The delays of the reconnection attempts ClientService has scheduled."""
    return sorted(call.getTime() - clock.seconds() for call in clock.getDelayedCalls()
                  if "_reconnect" in repr(call.func))


class ReconnectTests(TestCase):
    timeout = 30

    def setUp(self):
        return subscribed(self)

    @defer.inlineCallbacks
    def drop(self):
        lost = self.session.next_disconnect()
        self.upstream.authenticated()[0].drop()
        yield lost
        yield turn()

    @defer.inlineCallbacks
    def test_backoff_grows_when_tcp_connects_but_websocket_fails(self):
        """Handshakes refused with 429 after TCP connects still make the delay grow."""
        clock = self.harness.clock
        yield self.drop()
        self.upstream.refuse_handshake = 429
        delays = []
        for attempt in range(1, 6):
            [delay] = [d for d in retry_delays(clock) if d < 60]
            delays.append(delay)
            lost = self.session.next_disconnect()
            clock.advance(delay)
            yield lost
            yield turn()
        # One good session lost, then refusals: ceilings 1, 1, 2, 4, 8 seconds.
        for delay, ceiling in zip(delays, [1, 1, 2, 4, 8]):
            self.assertTrue(ceiling / 2 <= delay <= ceiling, delays)
        self.assertEqual(self.upstream.handshakes, 1 + 5)
        # The client stayed connected all along, and gets data once upstream is back.
        self.upstream.refuse_handshake = 0
        clock.advance(retry_delays(clock)[0])
        yield self.upstream.when(lambda: any(
            c.subscriptions["trades"] == ["AAPL"] for c in self.upstream.authenticated()))
        self.assertEqual(self.client.state, self.client.STATE_OPEN)

    @defer.inlineCallbacks
    def test_406_after_reconnect_resends_auth_on_the_same_socket(self):
        """While upstream still holds the old slot, auth is re-sent on the same socket."""
        clock = self.harness.clock
        yield self.drop()
        self.upstream.stale_slots.add((KEY, "/v2/iex"))
        refused = lambda event: event.get("code") == 406 and "delay" in event
        first = logged(self, refused)
        clock.advance(1.0)
        self.assertEqual((yield first)["delay"], 0.5)
        second = logged(self, refused)
        clock.advance(0.5)
        self.assertEqual((yield second)["delay"], 1.0)
        self.upstream.stale_slots.clear()
        clock.advance(1.0)
        yield self.upstream.when(lambda: any(
            c.subscriptions["trades"] == ["AAPL"] for c in self.upstream.authenticated()))
        auths = [m for _, m in self.upstream.received if m.get("action") == "auth"]
        self.assertEqual((len(auths), self.upstream.handshakes), (4, 2))


class FatalAuthTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_insufficient_subscription_is_relayed_and_not_retried(self):
        """Upstream's 409 at auth goes to the client; the proxy stops dialling."""
        harness = yield Harness(self).start()
        harness.upstream.auth_error = 409
        client = yield harness.connect()
        yield client.next()
        client.send({"action": "auth", "key": KEY, "secret": "s3cr3t-Fh9vQ2"})
        self.assertEqual((yield client.next()),
                         [{"T": "error", "code": 409, "msg": "insufficient subscription"}])
        yield harness.upstream.when(lambda: not harness.upstream.connections)
        yield turn()
        harness.clock.advance(60)
        self.assertEqual(harness.upstream.handshakes, 1)
        self.assertEqual(harness.pool.sessions, [])

    @defer.inlineCallbacks
    def test_slow_upstream_verdict_does_not_block_locally_verified_client(self):
        """A locally verified client is answered within 2.5 s even if upstream is refusing."""
        harness = yield Harness(self).start()
        harness.upstream.refuse_handshake = 503
        client = yield harness.connect()
        yield client.next()
        client.send({"action": "auth", "key": KEY, "secret": "s3cr3t-Fh9vQ2"})
        yield harness.upstream.when(lambda: harness.upstream.handshakes == 1)
        harness.clock.advance(2.5)
        self.assertEqual((yield client.next()), [{"T": "success", "msg": "authenticated"}])


class HealthTests(TestCase):
    timeout = 30

    def start(self, **health):
        from alpaca_proxy.upstream.link import Liveness

        return subscribed(self, liveness=Liveness(**health))

    @defer.inlineCallbacks
    def replayed(self):
        """After a drop: reconnect on the clock, and the union is subscribed again."""
        yield turn()
        self.harness.clock.advance(1.0)
        yield self.upstream.when(lambda: any(
            c.subscriptions["trades"] == ["AAPL"] for c in self.upstream.authenticated()))

    @defer.inlineCallbacks
    def test_mute_upstream_is_redialled_after_the_silence_limit(self):
        """Subscribed but no data for longer than the silence limit: reconnect and resubscribe."""
        yield self.start(silence_timeout=20)
        clock = self.harness.clock
        lost = self.session.next_disconnect()
        clock.advance(10)
        self.upstream.inject([{"T": "t", "S": "AAPL", "p": 1.0, "s": 1, "i": 1}])
        yield self.client.next()
        clock.advance(10)
        clock.advance(10)
        self.assertFalse(lost.called, "data 20 s ago is within the limit")
        clock.advance(10)
        clock.advance(10)
        yield lost
        yield self.replayed()
        self.assertEqual(self.client.state, self.client.STATE_OPEN)

    @defer.inlineCallbacks
    def test_half_open_upstream_is_dropped_when_pongs_stop(self):
        """An upstream that stops answering pings is dropped after the ping timeout."""
        yield self.start(ping_interval=10, ping_timeout=30)
        clock = self.harness.clock
        [connection] = self.upstream.authenticated()
        connection.transport.pauseProducing()  # reads nothing, answers no ping
        lost = self.session.next_disconnect()
        clock.advance(10)
        clock.advance(29)
        self.assertFalse(lost.called)
        clock.advance(2)
        yield lost
        connection.transport.resumeProducing()
        yield self.replayed()


class UpstreamTlsTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_verified_tls_upstream(self):
        """A wss:// upstream whose certificate chains to the given CA and names the host."""
        harness = yield Harness(self, upstream_tls="localhost").start()
        client = yield harness.login()
        client.send({"action": "subscribe", "trades": ["AAPL"]})
        self.assertEqual((yield client.next())[0]["trades"], ["AAPL"])
        harness.upstream.inject([{"T": "t", "S": "AAPL", "p": 1.0}])
        self.assertEqual((yield client.next())[0]["S"], "AAPL")

    @defer.inlineCallbacks
    def refused(self, **tls):
        harness = yield Harness(self, **tls).start()
        unreachable = logged(self, lambda e: "upstream" in e.get("log_format", "") and
                             any(word in e.get("cause", "") for word in
                                 ("certificate verify failed", "Mismatch")))
        client = yield harness.connect()
        yield client.next()
        client.send({"action": "auth", "key": KEY, "secret": "s3cr3t-Fh9vQ2"})
        event = yield unreachable
        self.assertEqual(harness.upstream.handshakes, 0)
        return event

    def test_wrong_host_name_refused(self):
        """A certificate for another host name is refused and logged, never accepted."""
        return self.refused(upstream_tls="127.0.0.1")

    def test_untrusted_ca_refused(self):
        """A certificate from a CA nobody trusts is refused and logged."""
        return self.refused(upstream_tls="localhost", trust_upstream=False)


class UnreachableUpstreamTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_refused_tcp_is_reported_and_backs_off(self):
        """Nothing listening upstream: each attempt is logged, delays double, the client waits."""
        harness = yield Harness(self).start()
        yield harness.upstream_port.stopListening()
        clock = harness.clock
        delays = []
        failure = logged(self, lambda e: "unreachable" in e.get("log_format", ""))
        client = yield harness.connect()
        yield client.next()
        client.send({"action": "auth", "key": KEY, "secret": "s3cr3t-Fh9vQ2"})
        for attempt in range(4):
            event = yield failure
            self.assertIn("refused", event["reason"].lower())
            before = set(clock.getDelayedCalls())
            yield turn()
            [retry] = [call for call in clock.getDelayedCalls() if call not in before]
            delay = retry.getTime() - clock.seconds()
            delays.append(delay)
            failure = logged(self, lambda e: "unreachable" in e.get("log_format", ""))
            clock.advance(delay)
        for delay, ceiling in zip(delays, [1, 2, 4, 8]):
            self.assertTrue(ceiling / 2 <= delay <= ceiling, delays)
        # Locally verified credentials: answered after 2.5 s whatever upstream does.
        self.assertEqual((yield client.next()), [{"T": "success", "msg": "authenticated"}])
        client.send({"action": "subscribe", "trades": ["AAPL"]})
        self.assertEqual((yield client.next())[0]["trades"], ["AAPL"])


class RefusalMemoryTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_refused_pair_is_answered_locally_for_a_while(self):
        """After upstream refuses a pair, retries get the same error without dialling again."""
        harness = yield Harness(self, configured=False).start()

        @defer.inlineCallbacks
        def attempt():
            client = yield harness.connect()
            yield client.next()
            client.send({"action": "auth", "key": KEY, "secret": "wrong"})
            return (yield client.next())

        self.assertEqual((yield attempt())[0]["code"], 402)
        self.assertEqual((yield attempt())[0]["code"], 402)
        self.assertEqual(harness.upstream.handshakes, 1)
        harness.clock.advance(61)
        self.assertEqual((yield attempt())[0]["code"], 402)
        self.assertEqual(harness.upstream.handshakes, 2)


class CleanUpstreamCloseTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_upstream_closing_cleanly_is_redialled(self):
        """Upstream closing with a close handshake: reconnect, replay; the client stays."""
        harness = yield Harness(self).start()
        client = yield harness.login()
        client.send({"action": "subscribe", "quotes": ["MSFT"]})
        yield client.next()
        lost = harness.pool.sessions[0].next_disconnect()
        harness.upstream.authenticated()[0].sendClose(1000, "maintenance")
        yield lost
        yield turn()
        harness.clock.advance(1.0)
        yield harness.upstream.when(lambda: any(
            c.subscriptions["quotes"] == ["MSFT"] for c in harness.upstream.authenticated()))
        harness.upstream.inject([{"T": "q", "S": "MSFT", "bp": 1.0}])
        self.assertEqual((yield client.next())[0]["S"], "MSFT")


class SlowAckTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_client_answered_within_go_budget_when_upstream_stalls(self):
        """Upstream connected but silent on a subscribe: the client is acked after 2.5 s."""
        harness = yield Harness(self).start()
        client = yield harness.login()
        harness.upstream.ignore_requests = True
        client.send({"action": "subscribe", "trades": ["AAPL"]})
        yield harness.upstream.when(lambda: harness.upstream_messages("subscribe"))
        yield turn()
        self.assertEqual(list(client.frames), [])
        harness.clock.advance(2.5)
        self.assertEqual((yield client.next())[0]["trades"], ["AAPL"])


class UnresolvableUpstreamTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_dns_failure_is_reported_and_retried(self):
        """An upstream name that does not resolve: logged as unreachable, retried with backoff."""
        harness = yield Harness(self, upstream_url="ws://upstream.invalid:443").start()
        failure = logged(self, lambda e: "unreachable" in e.get("log_format", ""))
        client = yield harness.connect()
        yield client.next()
        client.send({"action": "auth", "key": KEY, "secret": "s3cr3t-Fh9vQ2"})
        event = yield failure
        self.assertIn("upstream.invalid", event["reason"])
        before = set(harness.clock.getDelayedCalls())
        yield turn()
        [retry] = [call for call in harness.clock.getDelayedCalls() if call not in before]
        self.assertTrue(0.5 <= retry.getTime() - harness.clock.seconds() <= 1.0)
        again = logged(self, lambda e: "unreachable" in e.get("log_format", ""))
        harness.clock.advance(1.0)
        yield again


class RefusalMemoryKeptTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_right_pair_does_not_erase_the_wrong_pairs_refusal(self):
        """A refused pair stays refused locally even after the right pair was presented."""
        harness = yield Harness(self, configured=False, linger=0).start()

        @defer.inlineCallbacks
        def wrong():
            client = yield harness.connect()
            yield client.next()
            client.send({"action": "auth", "key": KEY, "secret": "wrong"})
            return (yield client.next())

        self.assertEqual((yield wrong())[0]["code"], 402)
        right = yield harness.login()
        right.sendClose()
        yield right.closed
        yield turn()
        harness.clock.advance(1)  # linger 0: the right pair's upstream closes
        yield harness.upstream.when(lambda: not harness.upstream.connections)
        self.assertEqual((yield wrong())[0]["code"], 402)
        self.assertEqual(harness.upstream.handshakes, 2)


class NewcomerWithoutUpstreamTests(TestCase):
    """No account configured and Alpaca unreachable: the client hears why, at once."""

    timeout = 20

    @defer.inlineCallbacks
    def test_client_is_told_the_cause_and_health_says_so(self):
        """Error 500 naming the cause (not a 404 auth timeout ten seconds later), a 1011
        close; /healthz 503 and status.json show the upstream unreachable and why."""
        from twisted.internet import reactor
        from twisted.web.client import Agent, readBody

        harness = yield Harness(self, configured=False).start()
        yield harness.upstream_port.stopListening()
        client = yield harness.connect()
        yield client.next()
        client.send({"action": "auth", "key": KEY, "secret": "any"})
        [error] = yield client.next()
        self.assertEqual(error["code"], 500)
        self.assertTrue(error["msg"].startswith("internal error: upstream unreachable: cannot"
                                                " reach ws://127.0.0.1:"), error)
        self.assertIn("refused", error["msg"].lower())
        self.assertEqual((yield client.closed), 1011)
        agent = Agent(reactor)
        base = "http://127.0.0.1:%d" % (harness.port,)
        response = yield agent.request(b"GET", (base + "/healthz").encode())
        body = yield readBody(response)
        self.assertEqual(response.code, 503)
        self.assertIn(b"unreachable: cannot reach", body)
        response = yield agent.request(b"GET", (base + "/status.json").encode())
        import json
        [upstream] = json.loads((yield readBody(response)))["upstreams"]
        self.assertEqual(upstream["state"], "unreachable")
        self.assertIn("cannot reach", upstream["last_error"])
