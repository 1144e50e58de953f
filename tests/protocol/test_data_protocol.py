"""Alpaca's data protocol end to end without sockets: real Autobahn clients talk to the
proxy's protocol over ``iosim``; the session's link is scripted by the test."""

import json

import msgpack
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy import codec
from alpaca_proxy.credentials import Credentials
from alpaca_proxy.dialects.alpaca_data import DIALECTS
from alpaca_proxy.downstream.alpaca_data import AlpacaDataProtocol
from alpaca_proxy.downstream.client import ClientFactory
from alpaca_proxy.proxy import Proxy
from alpaca_proxy.refusal import AUTH_FAILED, Refused
from alpaca_proxy.streams import STOCKS, Stream
from alpaca_proxy.timers import use_clock
from alpaca_proxy.upstream.session import ACK_DEADLINE, DataSession

PAIR = Credentials("PKIOSIM", "s3cr3t-iosim")


class ScriptedLink:
    """The upstream side, answered by the test: records every change sent."""

    ready = True

    def __init__(self):
        self.changes = []

    def send_change(self, action, keys):
        self.changes.append((action, sorted(keys)))


class OneSessionPool:
    """Authenticates one pair into one session."""

    def __init__(self, session):
        self.session = session

    def authenticate(self, stream, credentials):
        if not PAIR.matches(credentials):
            return fail(Refused(AUTH_FAILED))
        return succeed(self.session)

    def join(self, session, client):
        session.attach(client)

    def leave(self, session, client):
        session.detach(client)


class Client(WebSocketClientProtocol):
    """Records decoded frames."""

    def onOpen(self):
        self.frames = []

    def onMessage(self, payload, isBinary):
        self.frames.append(msgpack.unpackb(payload, timestamp=3) if isBinary
                           else json.loads(payload))

    def send(self, message):
        self.sendMessage(json.dumps(message).encode(), False)

    def take(self):
        frames, self.frames = self.frames, []
        return frames


class DataProtocolTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.session = DataSession(Stream(STOCKS, "/v2/iex"), PAIR, self.clock,
                                   DIALECTS[STOCKS])
        self.session.link = self.link = ScriptedLink()
        self.session.link_ready()
        self.proxy = Proxy(self.clock, OneSessionPool(self.session))
        self.factory = ClientFactory(self.proxy, AlpacaDataProtocol)
        self.pumps = []

    def connect(self, msgpack_encoding=False):
        headers = {"Content-Type": "application/msgpack"} if msgpack_encoding else {}
        client_factory = WebSocketClientFactory("ws://127.0.0.1/v2/iex", headers=headers)
        client_factory.protocol = Client
        use_clock(client_factory, self.clock)
        client = client_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8765))
        server = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        pump = iosim.connect(server, iosim.makeFakeServer(server),
                             client, iosim.makeFakeClient(client), greet=False)
        pump.flush()
        self.pumps.append(pump)
        return client

    def flush(self):
        for pump in self.pumps:
            pump.flush()

    def login(self, **kwargs):
        client = self.connect(**kwargs)
        client.send({"action": "auth", "key": PAIR.key, "secret": PAIR.secret})
        self.flush()
        self.assertEqual(client.take(), [[{"T": "success", "msg": "connected"}],
                                         [{"T": "success", "msg": "authenticated"}]])
        return client

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
        self.assertEqual(self.session.state_of(self.server_of(client)), {})

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

    def server_of(self, client):
        return next(iter(self.proxy.clients))
