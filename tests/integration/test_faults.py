"""Slow and hostile clients: the proxy cuts off the offender and nobody else notices."""

import msgpack
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from alpaca_proxy.proxy import Limits
from tests.support import Harness, logged, turn


def trade(symbol, n, pad=0):
    return {"T": "t", "S": symbol, "i": n, "x": "V", "p": 1.5, "s": 1, "c": ["@"], "z": "C",
            "t": msgpack.Timestamp(1714658587, 0), "pad": "x" * pad}


class SlowClientTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_client_that_stops_reading_is_cut_off_alone(self):
        """A client that stops reading gets 407 and is closed; the other gets everything."""
        harness = yield Harness(self, limits=Limits(buffer_bytes=256 << 10)).start()
        good = yield harness.login(msgpack_encoding=True)
        slow = yield harness.login(msgpack_encoding=True)
        for client in (good, slow):
            client.send({"action": "subscribe", "trades": ["AAPL"]})
            yield client.next()
        slow.transport.pauseProducing()  # stop reading from the socket
        dropped = logged(self, lambda event: event.get("code") == 407)
        frames, per_frame = 200, 10
        for n in range(frames):
            harness.upstream.inject([trade("AAPL", n * per_frame + k, pad=5000)
                                     for k in range(per_frame)])
        received = []
        while len(received) < frames * per_frame:
            received += [m["i"] for m in (yield good.next())]
        self.assertEqual(received, list(range(frames * per_frame)))
        event = yield dropped
        self.assertGreater(event["queued"], 256 << 10)
        slow.transport.resumeProducing()
        yield slow.closed
        self.assertNotIn(slow, [c for c in harness.proxy.clients])
        self.assertEqual(harness.upstream.handshakes, 1)
        self.assertEqual(len(harness.pool.sessions[0].router), 1)


class LimitTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_symbol_limits_are_405_and_change_nothing(self):
        """Too many symbols in a request, or held by a client: 405, state as it was."""
        harness = yield Harness(self, limits=Limits(symbols_per_request=3,
                                                    symbols_per_client=4)).start()
        client = yield harness.login()
        client.send({"action": "subscribe", "trades": ["A", "B"], "quotes": ["C", "D"]})
        self.assertEqual((yield client.next())[0]["code"], 405)
        client.send({"action": "subscribe", "trades": ["A", "B"], "quotes": ["C"]})
        self.assertEqual((yield client.next())[0]["trades"], ["A", "B"])
        client.send({"action": "subscribe", "bars": ["X", "Y"]})
        self.assertEqual((yield client.next()),
                         [{"T": "error", "code": 405, "msg": "symbol limit exceeded"}])
        client.send({"action": "subscribe", "bars": ["X"]})
        ack = (yield client.next())[0]
        self.assertEqual((ack["trades"], ack["quotes"], ack["bars"]), (["A", "B"], ["C"], ["X"]))

    @defer.inlineCallbacks
    def test_flooding_client_is_closed_and_others_go_on(self):
        """More messages than the rate allows: that client is closed (1008), no one else."""
        harness = yield Harness(self, limits=Limits(messages_per_second=5)).start()
        flood = yield harness.login()
        calm = yield harness.login()
        for n in range(12):
            flood.send({"action": "subscribe", "trades": ["S%d" % n]})
        self.assertEqual((yield flood.closed), 1008)
        harness.clock.advance(1)
        calm.send({"action": "subscribe", "trades": ["AAPL"]})
        self.assertEqual((yield calm.next())[0]["trades"], ["AAPL"])

    @defer.inlineCallbacks
    def test_client_limit_refuses_at_handshake(self):
        """With a client limit, one more is refused (HTTP 503) until someone leaves."""
        harness = yield Harness(self, limits=Limits(clients=2)).start()
        first = yield harness.connect()
        yield harness.connect()
        with self.assertRaises(ConnectionError):
            yield harness.connect()
        first.sendClose()
        yield first.closed
        yield turn()  # the proxy sees the close a turn after the client
        yield harness.connect(path="/stream")


class OriginTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_web_pages_refused_unless_allowed(self):
        """An upgrade with an Origin (a browser page) is 403 unless listed; SDKs send none."""
        harness = yield Harness(self).start()
        with self.assertRaises(ConnectionError):
            yield harness.connect(headers={"Origin": "https://evil.example"})
        yield harness.connect()
        harness.proxy.origins = frozenset({"http://localhost:3000"})
        client = yield harness.connect(headers={"Origin": "http://localhost:3000"})
        self.assertEqual((yield client.next()), [{"T": "success", "msg": "connected"}])
        with self.assertRaises(ConnectionError):
            yield harness.connect(headers={"Origin": "http://localhost:3001"})
