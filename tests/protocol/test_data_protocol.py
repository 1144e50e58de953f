"""Alpaca's data protocol end to end without sockets: real Autobahn clients talk to the
proxy's protocol over ``iosim``; the session's link is scripted by the test."""

from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy import codec
from alpaca_proxy.upstream.session import ACK_DEADLINE
from tests.protocol.wire import PAIR, IosimProxy


class DataProtocolTests(IosimProxy, SynchronousTestCase):
    def setUp(self):
        self.build()

    def test_wrong_pair_gets_402(self):
        """A pair the pool refuses gets Alpaca's 402 after the welcome."""
        client = self.connect()
        client.send({"action": "auth", "key": PAIR.key, "secret": "wrong"})
        self.flush()
        self.assertEqual(client.take()[-1], [{"T": "error", "code": 402, "msg": "auth failed"}])

    def test_ack_waits_for_upstream_then_data_flows(self):
        """A new key goes upstream; the client's ack comes after upstream's, then its data."""
        client = self.login()
        client.send({"action": "subscribe", "trades": ["AAPL"]})
        self.flush()
        self.assertEqual(self.link.changes, [("subscribe", [("trades", "AAPL")])])
        self.assertEqual(client.take(), [])
        self.session.acked({("trades", "AAPL")})
        self.session.received([codec.Element.of({"T": "t", "S": "AAPL", "p": 1.5}),
                               codec.Element.of({"T": "t", "S": "MSFT", "p": 2.5})], 0)
        self.flush()
        [ack], data = client.take()
        self.assertEqual((ack["T"], ack["trades"], ack["corrections"]),
                         ("subscription", ["AAPL"], ["AAPL"]))
        self.assertEqual(data, [{"T": "t", "S": "AAPL", "p": 1.5}])

    def test_second_subscriber_sends_nothing_upstream(self):
        """A key upstream already streams is acknowledged at once, with no change upstream."""
        first, second = self.login(), self.login(msgpack_encoding=True)
        first.send({"action": "subscribe", "trades": ["AAPL"]})
        self.flush()
        self.session.acked({("trades", "AAPL")})
        second.send({"action": "subscribe", "trades": ["AAPL"]})
        self.flush()
        self.assertEqual(len(self.link.changes), 1)
        self.assertEqual(second.take()[0][0]["trades"], ["AAPL"])

    def test_silent_upstream_answered_after_the_deadline(self):
        """Upstream never acknowledges: the client is answered from local state at 2.5 s."""
        client = self.login()
        client.send({"action": "subscribe", "quotes": ["NVDA"]})
        self.flush()
        self.clock.advance(ACK_DEADLINE)
        self.flush()
        [[ack]] = client.take()
        self.assertEqual(ack["quotes"], ["NVDA"])

    def test_upstream_refusal_rolls_the_client_back(self):
        """Upstream's 405 reaches only the client that asked; its state is unchanged."""
        client = self.login()
        client.send({"action": "subscribe", "trades": ["A", "B"]})
        self.flush()
        self.session.request_refused(405)
        self.flush()
        self.assertEqual(client.take(),
                         [[{"T": "error", "code": 405, "msg": "symbol limit exceeded"}]])
        self.assertEqual(self.session.state_of(client.server), {})

    def test_link_down_answers_from_local_state_and_resubscribes(self):
        """While upstream is down requests are answered at once; the union goes up again."""
        client = self.login()
        self.session.link_down(True)
        client.send({"action": "subscribe", "bars": ["*"]})
        self.flush()
        self.assertEqual(client.take()[0][0]["bars"], ["*"])
        self.assertEqual(self.link.changes, [])
        self.session.link_ready()
        self.assertEqual(self.link.changes, [("subscribe", [("bars", "*")])])

    def test_leaving_unsubscribes_what_only_it_wanted(self):
        """A client that leaves takes its keys out of the union upstream."""
        client = self.login()
        client.send({"action": "subscribe", "trades": ["AAPL"]})
        self.flush()
        self.session.acked({("trades", "AAPL")})
        client.sendClose()
        self.flush()
        self.assertEqual(self.link.changes[-1], ("unsubscribe", [("trades", "AAPL")]))
        self.assertTrue(self.session.idle)
