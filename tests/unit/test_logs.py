"""Client warnings are summarized when they repeat; client values are cut short."""

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy.logs import Summarized, short


class SummarizedTests(SynchronousTestCase):
    def test_repeats_are_counted_in_one_line(self):
        """The first warning of a kind is logged; 99 more within the window make one line."""
        clock = Clock()
        notes = Summarized(clock, window=10.0)
        with capturedLogs() as events:
            for n in range(100):
                notes.warn("unknown-path", "refusing {peer}: unknown path {path}",
                           peer="p%d" % n, path="/x")
            notes.warn("origin", "refusing {peer}: origin", peer="q")
            clock.advance(10)
        self.assertEqual([(e.get("kind"), e.get("repeats")) for e in events],
                         [("unknown-path", None), ("origin", None), ("unknown-path", 99)])
        with capturedLogs() as events:
            notes.warn("unknown-path", "refusing {peer}: unknown path {path}", peer="r",
                       path="/y")
        self.assertEqual(len(events), 1)  # a new window logs again at once

    def test_long_values_are_cut(self):
        """A client value of 8 MiB is logged as 120 characters and its length."""
        value = "K" * (8 << 20)
        self.assertEqual(short(value), "K" * 120 + "...(8388608 chars)")
        self.assertEqual(short("PK123"), "PK123")
