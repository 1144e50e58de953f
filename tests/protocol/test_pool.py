"""The upstream pool under hostile credentials: what a client's keys can make it hold
or send upstream (a memory reactor, a Clock; links are driven by hand)."""

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy.credentials import Credentials
from alpaca_proxy.refusal import Refused
from alpaca_proxy.streams import STOCKS, Stream
from alpaca_proxy.upstream.pool import MAX_REMEMBERED, UpstreamPool

IEX = Stream(STOCKS, "/v2/iex")
SIP = Stream(STOCKS, "/v2/sip")
RIGHT = Credentials("PKREAL", "right-secret")


class PoolTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.reactor = MemoryReactorClock()
        self.pool = UpstreamPool(self.reactor, lambda: "ws://127.0.0.1:9", clock=self.clock,
                                 linger=5.0, max_sessions=3)
        self.pool.startService()
        self.addCleanup(self.pool.stopService)

    def outcome(self, deferred):
        """What a Deferred fired with (consumed), or None while it has not fired."""
        if not deferred.called:
            return None
        results = []
        deferred.addBoth(results.append)
        return results[0]

    def session(self, stream=IEX, key=RIGHT.key):
        return next(s for s in self.pool.sessions
                    if s.credentials.key == key and s.stream == stream)

    def test_oversized_credentials_refused_locally(self):
        """A key id over 128 or a secret over 1,024 characters never opens anything."""
        for pair in (Credentials("K" * 129, "s"), Credentials("K", "s" * 1025),
                     Credentials("", "s")):
            self.outcome(self.pool.authenticate(IEX, pair)).trap(Refused)
        self.assertEqual(self.pool.sessions, [])

    def test_one_attempt_per_key_id_and_the_right_pair_gets_its_turn(self):
        """A second pair for a key id waits for the first one's verdict instead of being
        refused; when upstream refuses the first, the second is tried."""
        wrong = self.pool.authenticate(IEX, Credentials(RIGHT.key, "guess"))
        right = self.pool.authenticate(IEX, RIGHT)
        self.assertEqual(len(self.pool.sessions), 1)
        self.session().link_refused(402)
        self.outcome(wrong).trap(Refused)
        self.assertIsNone(self.outcome(right))
        [session] = self.pool.sessions
        self.assertTrue(session.credentials.matches(RIGHT))
        session.link_ready()
        self.assertIs(self.outcome(right), session)
        guess = self.pool.authenticate(IEX, Credentials(RIGHT.key, "later guess"))
        self.assertEqual(self.outcome(guess).value.code, 402)  # the right pair is known now

    def test_failures_throttled_per_key_id(self):
        """After two refusals in a row, the next new pair waits 1 s, then 2 s ..."""
        for n in range(2):
            attempt = self.pool.authenticate(IEX, Credentials(RIGHT.key, "guess%d" % n))
            self.session().link_refused(402)
            self.outcome(attempt).trap(Refused)
        third = self.pool.authenticate(IEX, Credentials(RIGHT.key, "guess2"))
        self.assertEqual(self.pool.sessions, [])
        self.clock.advance(1.0)
        self.assertEqual(len(self.pool.sessions), 1)
        self.session().link_refused(402)
        self.outcome(third).trap(Refused)
        fourth = self.pool.authenticate(IEX, Credentials(RIGHT.key, "guess3"))
        self.clock.advance(1.0)
        self.assertEqual(self.pool.sessions, [])
        self.clock.advance(1.0)
        self.assertEqual(len(self.pool.sessions), 1)
        fourth.cancel()
        self.outcome(fourth).trap(CancelledError)

    def test_a_pair_accepted_before_is_not_throttled(self):
        """The pair upstream accepted before gets in at once, however many guesses failed."""
        first = self.pool.authenticate(IEX, RIGHT)
        self.session().link_ready()
        self.assertIsNotNone(self.outcome(first))
        self.pool.leave(self.session(), object())
        self.clock.advance(6)  # linger: the session retires
        for n in range(4):
            attempt = self.pool.authenticate(IEX, Credentials(RIGHT.key, "guess%d" % n))
            self.clock.advance(30)
            self.session().link_refused(402)
            self.outcome(attempt).trap(Refused)
        self.pool.authenticate(IEX, RIGHT)
        self.assertEqual(len(self.pool.sessions), 1)

    def test_refusal_memory_is_bounded(self):
        """Refused pairs are remembered, the oldest forgotten past the bound."""
        pool = UpstreamPool(self.reactor, lambda: "ws://127.0.0.1:9", clock=self.clock,
                            max_sessions=0)
        pool.startService()
        self.addCleanup(pool.stopService)
        for n in range(MAX_REMEMBERED + 10):
            attempt = pool.authenticate(IEX, Credentials("K%d" % n, "wrong"))
            pool.sessions[0].link_refused(402)
            self.outcome(attempt).trap(Refused)
        self.assertEqual(len(pool._refusals), MAX_REMEMBERED)
        self.assertEqual(pool.sessions, [])

    def test_session_cap(self):
        """Past --max-upstreams, a client that needs another upstream gets 406."""
        waiting = [self.pool.authenticate(IEX, Credentials("K%d" % n, "s")) for n in range(3)]
        refused = self.outcome(self.pool.authenticate(IEX, Credentials("K9", "s")))
        self.assertEqual(refused.value.code, 406)
        for attempt in waiting:
            attempt.cancel()
            self.outcome(attempt).trap(CancelledError)

    def test_session_without_verdict_retires_after_its_client_left(self):
        """Upstream unreachable: once the waiting client leaves, the session retires after
        --linger instead of dialling for ever."""
        waiting = self.pool.authenticate(SIP, RIGHT)
        self.clock.advance(60)
        self.assertEqual(len(self.pool.sessions), 1)
        waiting.cancel()
        self.outcome(waiting).trap(CancelledError)
        self.clock.advance(4.9)
        self.assertEqual(len(self.pool.sessions), 1)
        self.clock.advance(0.2)
        self.assertEqual(self.pool.sessions, [])
