"""Slow and hostile clients: the proxy cuts off the offender and nobody else notices."""

import msgpack
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.support import Harness, logged


def trade(symbol, n, pad=0):
    return {"T": "t", "S": symbol, "i": n, "x": "V", "p": 1.5, "s": 1, "c": ["@"], "z": "C",
            "t": msgpack.Timestamp(1714658587, 0), "pad": "x" * pad}


class SlowClientTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_client_that_stops_reading_is_cut_off_alone(self):
        """A client that stops reading gets 407 and is closed; the other gets everything."""
        harness = yield Harness(self).start()
        harness.factory.buffer_limit = 256 << 10
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
        self.assertNotIn(slow, [c for c in harness.factory.clients])
        self.assertEqual(harness.upstream.handshakes, 1)
        self.assertEqual(len(harness.pool.sessions[0].router), 1)
