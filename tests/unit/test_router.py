"""Unit tests for the pure subscription router."""

from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy.router import Router
from alpaca_proxy.subscriptions import Change, applied, keys_of


class FakeClient:
    """Records what the router tells a client."""

    def __init__(self, name):
        self.name = name
        self.acks = []
        self.errors = []

    def acknowledge(self, state):
        self.acks.append({channel: list(symbols) for channel, symbols in state.items()})

    def refuse(self, code):
        self.errors.append(code)

    def __repr__(self):
        return "<FakeClient %s>" % (self.name,)


class FakeLink:
    """Records what the router sends upstream."""

    def __init__(self):
        self.sent = []

    def send_change(self, action, keys):
        self.sent.append((action, sorted(keys)))


def sub(**channels):
    return Change("subscribe", {name: tuple(symbols) for name, symbols in channels.items()})


def unsub(**channels):
    return Change("unsubscribe", {name: tuple(symbols) for name, symbols in channels.items()})


class StateTests(SynchronousTestCase):
    def test_subscribe_adds_and_unsubscribe_subtracts(self):
        """subscribe is a union, unsubscribe a difference; empty channels vanish."""
        state = applied({}, sub(trades=["A", "B"], quotes=["A"]))
        state = applied(state, unsub(trades=["B"], quotes=["A"], bars=["Z"]))
        self.assertEqual(state, {"trades": {"A": None}})

    def test_duplicates_are_harmless(self):
        """Subscribing a symbol twice keeps it once, in first-seen order."""
        state = applied({"trades": {"B": None}}, sub(trades=["A", "B", "A"]))
        self.assertEqual(list(state["trades"]), ["B", "A"])


class RouterTests(SynchronousTestCase):
    def setUp(self):
        self.router = Router()
        self.link = FakeLink()
        self.a, self.b = FakeClient("a"), FakeClient("b")
        self.router.attach(self.a)
        self.router.attach(self.b)

    def ready(self):
        self.router.upstream_ready(self.link)

    def test_requests_before_upstream_are_answered_at_once(self):
        """With no upstream, a request is acknowledged from local state, nothing is sent."""
        self.router.request(self.a, sub(trades=["AAPL"]))
        self.assertEqual(self.a.acks, [{"trades": ["AAPL"]}])
        self.assertEqual(self.link.sent, [])

    def test_union_sent_when_upstream_becomes_ready(self):
        """On (re)authentication the whole union goes upstream in one message."""
        self.router.request(self.a, sub(trades=["AAPL"], bars=["*"]))
        self.router.request(self.b, sub(trades=["AAPL", "MSFT"]))
        self.ready()
        self.assertEqual(
            self.link.sent,
            [("subscribe", [("bars", "*"), ("trades", "AAPL"), ("trades", "MSFT")])],
        )

    def test_new_key_waits_for_upstream_ack(self):
        """A request adding a key upstream lacks is acknowledged only after upstream's ack."""
        self.ready()
        self.router.request(self.a, sub(trades=["AAPL"]))
        self.assertEqual(self.link.sent, [("subscribe", [("trades", "AAPL")])])
        self.assertEqual(self.a.acks, [])
        self.assertEqual(self.router.recipients("trades", ["AAPL"]), set())
        self.router.upstream_acked({("trades", "AAPL")})
        self.assertEqual(self.a.acks, [{"trades": ["AAPL"]}])
        self.assertEqual(self.router.recipients("trades", ["AAPL"]), {self.a})

    def test_second_subscriber_sends_nothing_upstream(self):
        """A symbol already held upstream is not re-requested and is acknowledged at once."""
        self.ready()
        self.router.request(self.a, sub(trades=["AAPL"]))
        self.router.upstream_acked({("trades", "AAPL")})
        self.router.request(self.b, sub(trades=["AAPL"]))
        self.assertEqual(len(self.link.sent), 1)
        self.assertEqual(self.b.acks, [{"trades": ["AAPL"]}])

    def test_joiner_of_in_flight_key_waits_for_the_same_ack(self):
        """A client asking for a key still in flight waits for upstream, sending nothing."""
        self.ready()
        self.router.request(self.a, sub(quotes=["NVDA"]))
        self.router.request(self.b, sub(quotes=["NVDA"]))
        self.assertEqual(len(self.link.sent), 1)
        self.assertEqual(self.b.acks, [])
        self.router.upstream_acked({("quotes", "NVDA")})
        self.assertEqual(self.b.acks, [{"quotes": ["NVDA"]}])

    def test_unsubscribe_only_when_nobody_wants_it(self):
        """A key leaves upstream when its last client drops it, not before."""
        self.ready()
        self.router.request(self.a, sub(trades=["AAPL"]))
        self.router.upstream_acked({("trades", "AAPL")})
        self.router.request(self.b, sub(trades=["AAPL"]))
        self.router.request(self.a, unsub(trades=["AAPL"]))
        self.assertEqual(len(self.link.sent), 1)
        self.assertEqual(self.a.acks[-1], {})
        self.router.detach(self.b)
        self.assertEqual(self.link.sent[-1], ("unsubscribe", [("trades", "AAPL")]))

    def test_unsubscribe_stops_data_at_once(self):
        """No data reaches a client after the ack that removed its symbol."""
        self.ready()
        self.router.request(self.a, sub(trades=["AAPL"]))
        self.router.upstream_acked({("trades", "AAPL")})
        self.router.request(self.a, unsub(trades=["AAPL"]))
        self.assertEqual(self.router.recipients("trades", ["AAPL"]), set())

    def test_upstream_error_goes_to_the_requester_and_rolls_back_only_it(self):
        """A 405 from upstream refuses the asking client; its state and others' stay."""
        self.ready()
        self.router.request(self.a, sub(trades=["AAPL"]))
        self.router.upstream_acked({("trades", "AAPL")})
        self.router.request(self.b, sub(trades=["X1", "X2"]))
        refused = self.router.upstream_refused(405)
        self.assertIs(refused, self.b)
        self.assertEqual(self.b.errors, [405])
        self.assertEqual(self.b.acks, [])
        self.assertEqual(self.router.state(self.b), {})
        self.assertEqual(self.router.state(self.a), {"trades": {"AAPL": None}})
        self.assertEqual(self.router.wanted, {("trades", "AAPL")})
        self.assertEqual(len(self.link.sent), 1 + 1)

    def test_waiter_on_refused_request_is_asked_for_again(self):
        """When the request a client piggybacked on fails, its keys go up on its own behalf."""
        self.ready()
        self.router.request(self.a, sub(trades=["A1", "A2"]))
        self.router.request(self.b, sub(trades=["A1"]))
        self.router.upstream_refused(405)
        self.assertEqual(self.a.errors, [405])
        self.assertEqual(self.link.sent[-1], ("subscribe", [("trades", "A1")]))
        self.router.upstream_refused(405)
        self.assertEqual(self.b.errors, [405])
        self.assertEqual(self.router.wanted, set())

    def test_refused_union_is_not_retried_in_a_loop(self):
        """If upstream refuses the union after a reconnect, it is not re-sent forever."""
        self.router.request(self.a, sub(trades=["A"]))
        self.ready()
        self.router.upstream_refused(405)
        self.assertEqual(len(self.link.sent), 1)

    def test_client_requests_are_handled_in_order(self):
        """A second request waits for the first; each gets its own ack in order."""
        self.ready()
        self.router.request(self.a, sub(trades=["AAPL"]))
        self.router.request(self.a, unsub(trades=["AAPL"]))
        self.assertEqual(self.a.acks, [])
        self.router.upstream_acked({("trades", "AAPL")})
        self.assertEqual(self.a.acks, [{"trades": ["AAPL"]}, {}])
        self.assertEqual(self.link.sent[-1], ("unsubscribe", [("trades", "AAPL")]))

    def test_upstream_loss_answers_waiting_requests(self):
        """If upstream drops, waiting clients are answered from local state at once."""
        self.ready()
        self.router.request(self.a, sub(trades=["AAPL"]))
        self.router.upstream_lost()
        self.assertEqual(self.a.acks, [{"trades": ["AAPL"]}])
        self.router.upstream_ready(self.link)
        self.assertEqual(self.link.sent[-1], ("subscribe", [("trades", "AAPL")]))

    def test_detach_releases_subscriptions(self):
        """A disconnecting client's keys are unsubscribed upstream if nobody else wants them."""
        self.ready()
        self.router.request(self.a, sub(trades=["AAPL"], quotes=["MSFT"]))
        self.router.upstream_acked({("trades", "AAPL"), ("quotes", "MSFT")})
        self.router.detach(self.a)
        self.assertEqual(
            self.link.sent[-1], ("unsubscribe", [("quotes", "MSFT"), ("trades", "AAPL")])
        )
        self.assertEqual(self.router.route([("trades", ["AAPL"])]), {})

    def test_resubscribe_while_unsubscribe_in_flight(self):
        """A key re-added while its removal is in flight is asked for again once the
        removal is answered, and awaited."""
        self.ready()
        self.router.request(self.a, sub(trades=["AAPL"]))
        self.router.upstream_acked({("trades", "AAPL")})
        self.router.request(self.a, unsub(trades=["AAPL"]))
        self.router.request(self.b, sub(trades=["AAPL"]))
        self.assertEqual(self.link.sent[-1], ("unsubscribe", [("trades", "AAPL")]))
        self.router.upstream_acked(set())
        self.assertEqual(self.link.sent[-1], ("subscribe", [("trades", "AAPL")]))
        self.assertEqual(self.b.acks, [])
        self.router.upstream_acked({("trades", "AAPL")})
        self.assertEqual(self.b.acks, [{"trades": ["AAPL"]}])

    def test_route_wildcard_and_symbols_once_each(self):
        """``*`` matches every symbol; a client gets each message at most once, in order."""
        self.router.request(self.a, sub(trades=["*", "AAPL"]))
        self.router.request(self.b, sub(trades=["MSFT"], quotes=["AAPL"]))
        routed = self.router.route(
            [("trades", ["AAPL"]), ("quotes", ["AAPL"]), ("trades", ["MSFT"]), (None, ())]
        )
        self.assertEqual(routed, {self.a: [0, 2], self.b: [1, 2]})

    def test_news_by_any_symbol(self):
        """A story goes to clients of any of its symbols; none only to ``*``."""
        self.router.request(self.a, sub(news=["AAPL"]))
        self.router.request(self.b, sub(news=["*"]))
        self.assertEqual(
            self.router.route([("news", ["TSLA", "AAPL"]), ("news", [])]),
            {self.a: [0], self.b: [0, 1]},
        )

    def test_one_audience_object_per_distinct_subscriber_set(self):
        """Symbols with the same subscribers share one audience object (so a frame's
        messages group by identity); a change builds the affected audience anew."""
        self.router.request(self.a, sub(trades=["AAPL", "MSFT"], quotes=["AAPL"]))
        self.router.request(self.b, sub(trades=["TSLA"]))
        aapl = self.router.audience("trades", "AAPL")
        self.assertEqual(aapl, {self.a})
        self.assertIs(self.router.audience("trades", "MSFT"), aapl)
        self.assertIs(self.router.audience("quotes", "AAPL"), aapl)
        self.assertEqual(self.router.audience("trades", "TSLA"), {self.b})
        self.assertEqual(self.router.audience("trades", "NVDA"), frozenset())
        self.router.request(self.b, sub(trades=["AAPL"]))
        self.assertEqual(self.router.audience("trades", "AAPL"), {self.a, self.b})
        self.assertEqual(self.router.audience("trades", "MSFT"), {self.a})
        self.router.request(self.b, sub(trades=["*"]))
        self.assertEqual(self.router.audience("trades", "MSFT"), {self.a, self.b})
        self.router.request(self.b, unsub(trades=["*", "AAPL"]))
        self.assertEqual(self.router.audience("trades", "MSFT"), {self.a})
        self.router.detach(self.a)
        self.assertEqual(self.router.audience("trades", "AAPL"), frozenset())

    def test_audiences_kept_stay_bounded(self):
        """Symbols nobody wants are not kept; distinct sets are forgotten with churn."""
        for n in range(500):
            self.router.audience("trades", "X%d" % n)
        self.assertEqual(self.router.audiences.get("trades", {}), {})
        for n in range(300):
            self.router.request(self.a, sub(trades=["S%d" % n]))
            self.router.audience("trades", "S0")
            self.router.request(self.b, sub(trades=["S0"]))
            self.router.audience("trades", "S0")
            self.router.request(self.b, unsub(trades=["S0"]))
        self.assertLess(len(self.router._distinct), 100)

    def test_keys_of(self):
        """keys_of lists (channel, symbol) pairs."""
        self.assertEqual(
            keys_of({"trades": {"A": None}, "bars": {"*": None}}),
            {("trades", "A"), ("bars", "*")},
        )


class SettleTests(SynchronousTestCase):
    def test_settle_waiting_answers_from_local_state_and_keeps_order(self):
        """Settled requests are acked now; upstream's later ack still matches in order."""
        router, link = Router(), FakeLink()
        a = FakeClient("a")
        router.attach(a)
        router.upstream_ready(link)
        router.request(a, sub(trades=["AAPL"]))
        self.assertTrue(router.waiting)
        self.assertEqual(router.settle_waiting(), [a])
        self.assertEqual(a.acks, [{"trades": ["AAPL"]}])
        self.assertFalse(router.waiting)
        self.assertEqual(router.recipients("trades", ["AAPL"]), {a})
        router.upstream_acked({("trades", "AAPL")})
        self.assertEqual(len(a.acks), 1)


class CoalescingTests(SynchronousTestCase):
    """Isolation: what one client's churn and size can cost upstream and the others."""

    def setUp(self):
        self.router, self.link = Router(), FakeLink()
        self.a, self.b = FakeClient("a"), FakeClient("b")
        self.router.attach(self.a)
        self.router.attach(self.b)
        self.router.upstream_ready(self.link)

    def test_churn_while_in_flight_is_coalesced(self):
        """Flipping a symbol on and off while a request is in flight sends nothing more
        until it is answered, then only the net difference."""
        self.router.request(self.a, sub(trades=["AAPL"]))
        for _ in range(50):
            self.router.request(self.b, sub(quotes=["X"]))
            self.router.request(self.b, unsub(quotes=["X"]))
        self.router.request(self.b, sub(quotes=["Y"]))
        self.assertEqual(self.link.sent, [("subscribe", [("trades", "AAPL")])])
        self.router.upstream_acked({("trades", "AAPL")})
        self.assertEqual(self.link.sent[1:], [("subscribe", [("quotes", "X")])])
        self.router.upstream_acked({("trades", "AAPL"), ("quotes", "X")})
        # b's 100 waiting requests are taken up together: their net effect goes up once.
        self.assertEqual(self.link.sent[2:], [("unsubscribe", [("quotes", "X")]),
                                              ("subscribe", [("quotes", "Y")])])
        self.router.upstream_acked({("trades", "AAPL")})
        self.router.upstream_acked({("trades", "AAPL"), ("quotes", "Y")})
        self.assertEqual(len(self.b.acks), 101)
        self.assertEqual(self.b.acks[1], {})
        self.assertEqual(self.b.acks[2], {"quotes": ["X"]})
        self.assertEqual(self.b.acks[-1], {"quotes": ["Y"]})
        self.assertEqual(len(self.link.sent), 4)

    def test_large_changes_go_up_in_chunks_each_acknowledged(self):
        """2,500 keys go up as three messages of at most 1,000; the client's ack waits
        for the last of them."""
        symbols = ["S%04d" % i for i in range(2500)]
        self.router.request(self.a, sub(trades=symbols))
        self.assertEqual([len(keys) for _, keys in self.link.sent], [1000, 1000, 500])
        union = set()
        for _, keys in self.link.sent:
            self.assertEqual(self.a.acks, [])
            union |= set(keys)
            self.router.upstream_acked(set(union))
        self.assertEqual(len(self.a.acks), 1)
        self.assertEqual(union, {("trades", s) for s in symbols})

    def test_a_refused_chunk_rolls_back_its_client(self):
        """Upstream refusing one chunk refuses the request that carried it."""
        self.router.request(self.a, sub(trades=["S%04d" % i for i in range(1500)]))
        self.router.upstream_refused(405)
        self.assertEqual(self.a.errors, [405])
        self.assertEqual(self.router.state(self.a), {})
        self.assertEqual(self.router.size_after(self.a, sub()), 0)

    def test_settling_lets_the_next_change_go_up(self):
        """A lost ack does not hold later changes back past the deadline."""
        self.router.request(self.a, sub(trades=["AAPL"]))
        self.router.request(self.b, sub(trades=["MSFT"]))
        self.assertEqual(len(self.link.sent), 1)
        self.router.settle_waiting()
        self.assertEqual(self.link.sent[-1], ("subscribe", [("trades", "AAPL"), ("trades", "MSFT")]))

    def test_limits_count_waiting_requests(self):
        """size_after counts what the client's queued requests will add; queued symbols
        are counted until they are taken up (all together)."""
        self.router.request(self.a, sub(trades=["A", "B"]))
        self.router.request(self.a, sub(trades=["B", "C"]))
        self.router.request(self.a, unsub(trades=["A"]))
        self.assertEqual(self.router.size_after(self.a, sub(trades=["C", "D"], quotes=["A"])), 4)
        self.assertEqual(self.router.queued_symbols(self.a), 3)
        self.router.upstream_acked({("trades", "A"), ("trades", "B")})
        self.assertEqual(self.router.queued_symbols(self.a), 0)
        self.assertEqual(self.router.size_after(self.a, sub()), 2)
