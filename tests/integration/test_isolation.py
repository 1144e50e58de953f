"""Isolation over loopback sockets, against the fake upstream."""

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from alpaca_proxy.proxy import Limits
from alpaca_proxy.router import CHUNK
from tests.support import Harness, connect


class ChunkTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_big_union_goes_up_in_acknowledged_chunks(self):
        """2,500 symbols reach the fake upstream as messages of at most 1,000, and the
        client's ack, after all of them, lists exactly the 2,500."""
        harness = yield Harness(self, limits=Limits(
            symbols_per_request=5000, symbols_per_client=5000, ping_interval=0)).start()
        client = yield harness.login()
        symbols = ["S%04d" % i for i in range(2500)]
        client.send({"action": "subscribe", "trades": symbols})
        ack = yield client.next()
        self.assertEqual(ack[0]["trades"], symbols)
        sent = harness.upstream_messages("subscribe")
        self.assertEqual([len(m["trades"]) for m in sent], [CHUNK, CHUNK, 500])
        [session] = harness.upstream.authenticated()
        self.assertEqual(sorted(session.subscriptions["trades"]), symbols)


class LogFloodTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_client_retrying_a_refused_path_writes_one_line(self):
        """Fifty attempts on an unknown path: one warning now, the count later."""
        harness = yield Harness(self).start()
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for _ in range(50):
            try:
                yield connect(harness.port, "/no/such/stream")
            except ConnectionError:
                pass
        # The proxy's own lines (the test's clients log their refusals too).
        about_clients = [e for e in events if e.get("log_namespace", "").startswith(
            ("alpaca_proxy", "autobahn.twisted.websocket.WebSocketServerProtocol"))
            and e.get("log_level").name in ("warn", "error")]
        self.assertEqual(len(about_clients), 1)
        harness.clock.advance(10)
        self.assertEqual(events[-1].get("repeats"), 49)
