"""Crypto order books: kept from upstream's updates, and whole books for late joiners."""

from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy.books import OrderBooks
from alpaca_proxy.router import Router
from alpaca_proxy.subscriptions import Change
from tests.support import T0, book


class OrderBooksTests(SynchronousTestCase):
    def test_snapshot_replaces_updates_change_and_zero_deletes(self):
        """r:true replaces the book; updates set levels; size 0 deletes; sorted snapshot."""
        books = OrderBooks()
        books.apply(book("BTC/USD", [(100.0, 1.0), (99.0, 2.0)], [(101.0, 1.5)], r=True))
        books.apply(book("BTC/USD", [(99.0, 0), (99.5, 3.0)], [(102.0, 0.1)]))
        self.assertEqual(books.snapshot("BTC/USD"), {
            "T": "o", "S": "BTC/USD", "t": T0,
            "b": [{"p": 100.0, "s": 1.0}, {"p": 99.5, "s": 3.0}],
            "a": [{"p": 101.0, "s": 1.5}, {"p": 102.0, "s": 0.1}], "r": True})
        books.apply(book("BTC/USD", [(1.0, 1.0)], [], r=True))
        self.assertEqual(books.snapshot("BTC/USD")["b"], [{"p": 1.0, "s": 1.0}])
        self.assertIsNone(books.snapshot("ETH/USD"))


class JoinHookTests(SynchronousTestCase):
    def test_join_reports_keys_upstream_already_held(self):
        """on_join names only the keys the client added that upstream already streamed."""
        joined = []
        router = Router(on_join=lambda client, keys: joined.append((client, keys)))

        class Client:
            def acknowledge(self, state):
                pass

        class Link:
            def send_change(self, action, keys):
                pass

        a, b = Client(), Client()
        router.attach(a)
        router.attach(b)
        router.upstream_ready(Link())
        router.request(a, Change("subscribe", {"orderbooks": ("BTC/USD",)}))
        router.upstream_acked({("orderbooks", "BTC/USD")})
        router.request(b, Change("subscribe", {"orderbooks": ("BTC/USD", "ETH/USD")}))
        router.upstream_acked({("orderbooks", "BTC/USD"), ("orderbooks", "ETH/USD")})
        self.assertEqual(joined, [(b, {("orderbooks", "BTC/USD")})])


class PartialBookTests(SynchronousTestCase):
    def test_updates_before_a_whole_book_are_not_a_book(self):
        """A replay from the middle of a recording: updates to a book never seen whole
        make no snapshot (it would claim to be whole); the next whole one does."""
        books = OrderBooks()
        books.apply({"T": "o", "S": "BTC/USD", "t": 1, "b": [{"p": 1.0, "s": 1.0}], "a": []})
        self.assertIsNone(books.snapshot("BTC/USD"))
        books.apply({"T": "o", "S": "BTC/USD", "t": 2, "r": True,
                     "b": [{"p": 2.0, "s": 1.0}], "a": []})
        self.assertEqual(books.snapshot("BTC/USD")["b"], [{"p": 2.0, "s": 1.0}])
