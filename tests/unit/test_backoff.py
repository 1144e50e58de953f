"""Reconnect backoff: exponential, jittered, capped."""

import random

from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy.upstream.link import backoff


class BackoffTests(SynchronousTestCase):
    def test_doubles_with_jitter_and_cap(self):
        """Delays double per attempt within [half, full] of the ceiling, capped at 30 s."""
        rng = random.Random(4)
        for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (5, 16), (6, 30), (40, 30)]:
            for _ in range(50):
                delay = backoff(attempt, rng)
                self.assertTrue(ceiling / 2 <= delay <= ceiling, (attempt, delay))
