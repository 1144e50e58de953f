"""Each provider's link, frame by frame: handshake, acks, refusals and retries on a Clock.

The link's websocket is replaced by a recording wire; what upstream would send is
fed to the link as frames.  No sockets.
"""

import json

import msgpack
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy.credentials import Credentials
from alpaca_proxy.dialects import alpaca_data, polygon
from alpaca_proxy.streams import POLYGON, STOCKS, TRADING_STREAM, Stream
from alpaca_proxy.upstream.alpaca_data import AlpacaDataLink
from alpaca_proxy.upstream.alpaca_trading import TradingLink
from alpaca_proxy.upstream.polygon import PolygonLink
from alpaca_proxy.upstream.session import ACK_DEADLINE

CREDENTIALS = Credentials("PKLINK", "s3cr3t-link")


class Wire:
    """Stands in for the websocket: records what the link sends."""

    cause = None
    state = WebSocketProtocol.STATE_OPEN

    def __init__(self):
        self.sent = []
        self.dropped = False

    def sendMessage(self, payload, binary=False):
        self.sent.append(msgpack.unpackb(payload) if binary else json.loads(payload))

    def dropConnection(self, abort=False):
        self.dropped = True


class Receiver:
    """Records what a link reports, as (event, argument) pairs."""

    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        if name.startswith(("link_", "acked", "request_refused", "received",
                            "upstream_error", "event")):
            return lambda *args: self.events.append((name,) + args)
        raise AttributeError(name)

    def of(self, name):
        return [event[1:] for event in self.events if event[0] == name]


def alpaca_frame(*messages):
    return msgpack.packb(list(messages))


class AlpacaDataLinkTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.receiver = Receiver()
        self.link = AlpacaDataLink(self.receiver, Stream(STOCKS, "/v2/iex"), CREDENTIALS,
                                   "ws://upstream.test/v2/iex", MemoryReactorClock(), self.clock,
                                   dialect=alpaca_data.DIALECTS[STOCKS])
        self.wire = Wire()
        self.link._opened(self.wire)

    def frame(self, *messages):
        self.link._on_frame(alpaca_frame(*messages), True)

    def authenticate(self):
        self.frame({"T": "success", "msg": "connected"})
        self.frame({"T": "success", "msg": "authenticated"})

    def test_welcome_then_auth_then_ready(self):
        """The link authenticates after the welcome and is ready once upstream says so."""
        self.assertEqual(self.receiver.of("link_connected"), [()])
        self.frame({"T": "success", "msg": "connected"})
        self.assertEqual(self.wire.sent, [{"action": "auth", "key": "PKLINK",
                                           "secret": "s3cr3t-link"}])
        self.assertFalse(self.link.ready)
        self.frame({"T": "success", "msg": "authenticated"})
        self.assertTrue(self.link.ready)
        self.assertEqual(self.receiver.of("link_ready"), [()])

    def test_406_resends_auth_on_the_same_socket_later(self):
        """After 406 the link waits 0.5 s × attempts and re-sends auth; it never redials."""
        self.frame({"T": "success", "msg": "connected"})
        self.frame({"T": "error", "code": 406, "msg": "connection limit exceeded"})
        self.clock.advance(0.4)
        self.assertEqual(len(self.wire.sent), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.wire.sent), 2)
        self.frame({"T": "error", "code": 406, "msg": "connection limit exceeded"})
        self.clock.advance(0.9)
        self.assertEqual(len(self.wire.sent), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.wire.sent), 3)
        self.assertFalse(self.wire.dropped)
        self.assertEqual(self.receiver.of("link_refused"), [])

    def test_fatal_auth_error_refuses_the_account(self):
        """409 at auth is upstream's verdict on the account."""
        self.frame({"T": "success", "msg": "connected"})
        self.frame({"T": "error", "code": 409, "msg": "insufficient subscription"})
        self.assertEqual(self.receiver.of("link_refused"), [(409,)])

    def test_changes_are_answered_by_acks_and_errors(self):
        """A change goes out as MessagePack; the ack's keys and request errors come back."""
        self.authenticate()
        self.link.send_change("subscribe", [("quotes", "MSFT"), ("trades", "AAPL")])
        self.assertEqual(self.wire.sent[-1], {"action": "subscribe", "quotes": ["MSFT"],
                                              "trades": ["AAPL"]})
        self.frame({"T": "subscription", "trades": ["AAPL"], "quotes": ["MSFT"], "bars": []})
        self.assertEqual(self.receiver.of("acked"),
                         [({("trades", "AAPL"), ("quotes", "MSFT")},)])
        self.frame({"T": "error", "code": 405, "msg": "symbol limit exceeded"})
        self.assertEqual(self.receiver.of("request_refused"), [(405,)])

    def test_data_only_once_ready(self):
        """Data before authentication is not handed on; after it, every frame is."""
        self.frame({"T": "t", "S": "AAPL", "p": 1.0})
        self.assertEqual([len(elements) for elements, _ in self.receiver.of("received")], [0])
        self.authenticate()
        self.frame({"T": "t", "S": "AAPL", "p": 1.0}, {"T": "q", "S": "AAPL"})
        [(elements, size)] = self.receiver.of("received")[-1:]
        self.assertEqual([e.message["T"] for e in elements], ["t", "q"])
        self.assertEqual(size, len(alpaca_frame({"T": "t", "S": "AAPL", "p": 1.0},
                                                {"T": "q", "S": "AAPL"})))

    def test_nothing_is_sent_on_a_closing_link(self):
        """Upstream sent a close frame but holds TCP: a change is dropped, not raised."""
        self.authenticate()
        sent = len(self.wire.sent)
        self.wire.state = WebSocketProtocol.STATE_CLOSING
        self.link.send_change("subscribe", [("trades", "AAPL")])
        self.assertEqual(len(self.wire.sent), sent)

    def test_loss_reports_whether_it_was_ready(self):
        """link_down says whether the connection had been authenticated."""
        self.authenticate()
        self.link._closed(self.wire, False, 1006, "gone")
        self.assertEqual(self.receiver.of("link_down"), [(True,)])
        self.assertFalse(self.link.ready)


class PolygonLinkTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.receiver = Receiver()
        self.link = PolygonLink(self.receiver, Stream(POLYGON, "/stocks"),
                                polygon.credentials_for("pkey"), "ws://upstream.test/stocks",
                                MemoryReactorClock(), self.clock,
                                dialect=polygon.DIALECTS["stocks"])
        self.wire = Wire()
        self.link._opened(self.wire)
        self.status("connected", "Connected Successfully")
        self.status("auth_success", "authenticated")

    def status(self, state, message):
        self.link._on_frame(json.dumps([{"ev": "status", "status": state,
                                         "message": message}]).encode(), False)

    def test_auth_by_params(self):
        """Polygon authenticates with the key as params."""
        self.assertEqual(self.wire.sent[0], {"action": "auth", "params": "pkey"})
        self.assertTrue(self.link.ready)

    def test_a_change_is_answered_once_every_parameter_is(self):
        """Per-parameter acks, in any grouping, answer the change once all arrived."""
        self.link.send_change("subscribe", [("T", "MSFT"), ("Q", "MSFT")])
        self.status("success", "subscribed to: T.MSFT")
        self.assertEqual(self.receiver.of("acked"), [])
        self.status("success", "subscribed to: Q.MSFT")
        self.assertEqual(self.receiver.of("acked"), [({("T", "MSFT"), ("Q", "MSFT")},)])

    def test_unanswered_change_counts_as_answered_after_the_deadline(self):
        """Past the ack deadline, a change counts as answered with what upstream holds."""
        self.link.send_change("subscribe", [("T", "MSFT")])
        self.clock.advance(ACK_DEADLINE - 0.01)
        self.assertEqual(self.receiver.of("acked"), [])
        self.clock.advance(0.01)
        self.assertEqual(self.receiver.of("acked"), [(set(),)])

    def test_error_status_is_for_everyone(self):
        """An upstream error status is handed on for the clients to hear."""
        self.status("error", "Your plan doesn't include websocket access.")
        [(message,)] = self.receiver.of("upstream_error")
        self.assertEqual(message["status"], "error")

    def test_eviction_makes_reconnects_wait_longer(self):
        """Evicted by another connection, the link waits longer before taking the slot back."""
        before = self.link.retry_delay(0)
        self.status("max_connections", "Maximum number of websocket connections exceeded.")
        self.link._closed(self.wire, False, 1008, "evicted")
        self.assertGreaterEqual(self.link.retry_delay(0), 1.0)
        self.assertLessEqual(before, 1.0)


class TradingLinkTests(SynchronousTestCase):
    def setUp(self):
        self.receiver = Receiver()
        self.link = TradingLink(self.receiver, TRADING_STREAM, CREDENTIALS,
                                "ws://upstream.test/stream", MemoryReactorClock(), Clock())
        self.wire = Wire()
        self.link._opened(self.wire)

    def frame(self, message, binary=True):
        payload = json.dumps(message).encode()
        self.link._on_frame(payload, binary)
        return payload

    def test_ready_only_once_listening(self):
        """auth, then listen; the account is accepted when upstream says it is listening."""
        self.assertEqual(self.wire.sent, [{"action": "auth", "key": "PKLINK",
                                           "secret": "s3cr3t-link"}])
        self.frame({"stream": "authorization", "data": {"status": "authorized",
                                                        "action": "authenticate"}})
        self.assertEqual(self.wire.sent[-1], {"action": "listen",
                                              "data": {"streams": ["trade_updates"]}})
        self.assertEqual(self.receiver.of("link_ready"), [])
        self.frame({"stream": "listening", "data": {"streams": ["trade_updates"]}})
        self.assertEqual(self.receiver.of("link_ready"), [()])

    def test_unauthorized_refuses(self):
        """An unauthorized answer is a refusal of the account (402)."""
        self.frame({"stream": "authorization", "data": {"status": "unauthorized",
                                                        "action": "authenticate"}})
        self.assertEqual(self.receiver.of("link_refused"), [(402,)])

    def test_events_keep_upstream_bytes(self):
        """Each trade update is handed on with upstream's bytes and frame type."""
        payload = self.frame({"stream": "trade_updates", "data": {"event": "fill"}}, False)
        [(stream, message, raw, binary)] = self.receiver.of("event")
        self.assertEqual((stream, raw, binary), ("trade_updates", payload, False))
        self.assertEqual(message["data"], {"event": "fill"})
