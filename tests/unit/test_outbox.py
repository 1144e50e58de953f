"""The outbox: data frames wait for the end of the reactor turn, then go out joined."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy.downstream.outbox import Outbox


class Client:
    def __init__(self):
        self.writes = []

    def write_frames(self, frames):
        self.writes.append(list(frames))


class OutboxTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = Clock()
        self.outbox = Outbox(self.reactor)
        self.a, self.b = Client(), Client()

    def test_one_write_per_client_per_turn_in_order(self):
        """Frames put in one turn reach each client together, in order, next turn."""
        for frame in (b"1", b"2"):
            self.outbox.put(self.a, frame)
        self.outbox.put(self.b, b"x")
        self.outbox.put(self.a, b"3")
        self.assertEqual((self.a.writes, self.b.writes), ([], []))
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(0)
        self.assertEqual((self.a.writes, self.b.writes), ([[b"1", b"2", b"3"]], [[b"x"]]))
        self.outbox.put(self.a, b"4")
        self.reactor.advance(0)
        self.assertEqual(self.a.writes[-1], [b"4"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_a_client_takes_its_frames_to_send_first(self):
        """A client about to write something else takes its waiting frames first;
        the turn's end then has nothing more for it."""
        self.outbox.put(self.a, b"1")
        self.outbox.put(self.b, b"x")
        self.assertEqual(self.outbox.take(self.a), [b"1"])
        self.assertIsNone(self.outbox.take(self.a))
        self.reactor.advance(0)
        self.assertEqual((self.a.writes, self.b.writes), ([], [[b"x"]]))
