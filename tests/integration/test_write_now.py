"""``net.write_now`` over real loopback sockets: one send when the way is clear, and
the exact byte stream, in order, when the peer stops reading and Twisted queues."""

from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import TestCase

from alpaca_proxy.net import write_now, writes_through
from tests.support import Harness


class Sink(protocol.Protocol):
    def connectionMade(self):
        self.received = []
        self.factory.connected.callback(self)

    def dataReceived(self, data):
        self.received.append(data)


class Source(protocol.Protocol):
    def connectionMade(self):
        self.factory.connected.callback(self)


def factory_of(kind, base=protocol.Factory):
    factory = base.forProtocol(kind)
    factory.connected = defer.Deferred()
    return factory


class WriteNowTests(TestCase):
    @defer.inlineCallbacks
    def connect(self):
        sources = factory_of(Source)
        port = reactor.listenTCP(0, sources, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sinks = factory_of(Sink, protocol.ClientFactory)
        reactor.connectTCP("127.0.0.1", port.getHost().port, sinks)
        source, sink = yield defer.gatherResults([sources.connected, sinks.connected])
        self.addCleanup(sink.transport.abortConnection)
        self.addCleanup(source.transport.abortConnection)
        return source, sink

    @defer.inlineCallbacks
    def test_sent_at_once_when_nothing_waits(self):
        """A frame that fits the socket goes out in the call: nothing is queued and
        the reactor is not asked to watch for writability."""
        source, sink = yield self.connect()
        self.assertTrue(writes_through(source.transport))
        write_now(source.transport, b"x" * 1500)
        self.assertNotIn(source.transport, reactor.getWriters())
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(b"".join(sink.received), b"x" * 1500)

    @defer.inlineCallbacks
    def test_goes_behind_what_twisted_holds(self):
        """Bytes Twisted still holds (written through ``transport.write`` in this
        reactor turn, say a close frame) go first, even though the socket has room."""
        source, sink = yield self.connect()
        source.transport.write(b"first,")
        write_now(source.transport, b"second")
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(b"".join(sink.received), b"first,second")

    @defer.inlineCallbacks
    def test_order_kept_when_the_peer_stops_reading(self):
        """Once the socket is full the rest is queued by Twisted, and every later
        frame goes behind it: the peer reads the exact stream written."""
        source, sink = yield self.connect()
        sink.transport.pauseProducing()
        frames = [(b"%08d" % n) * 512 for n in range(3000)]  # 12 MB, far above any buffer
        for frame in frames:
            write_now(source.transport, frame)
        self.assertIn(source.transport, reactor.getWriters())
        sink.transport.resumeProducing()
        expected = b"".join(frames)
        while sum(map(len, sink.received)) < len(expected):
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(b"".join(sink.received), expected)

    def test_only_plain_tcp_connections(self):
        """Anything but a plain TCP transport (TLS, tests' fakes) writes as usual."""
        self.assertFalse(writes_through(StringTransport()))


class OutboxOrderTests(TestCase):
    @defer.inlineCallbacks
    def test_data_waiting_for_the_turn_goes_before_a_later_ack(self):
        """A data frame held for the end of the turn is sent before anything the
        client is sent after it in the same turn (an ack, an error, a close)."""
        harness = yield Harness(self).start()
        client = yield harness.login()
        [server] = list(harness.proxy.clients)
        self.assertIsNotNone(server._outbox)
        server.send_prepared(server.prepare(b'[{"T":"t","S":"AAPL","i":1}]', False))
        server.sendMessage(b'[{"T":"subscription","trades":[]}]', False)
        server.send_prepared(server.prepare(b'[{"T":"t","S":"AAPL","i":2}]', False))
        frames = []
        for _ in range(3):
            frames.append((yield client.next()))
        self.assertEqual([frame[0].get("i", frame[0]["T"]) for frame in frames],
                         [1, "subscription", 2])
