"""Property-based: any frame a client sends, at the byte level, gets a reply or a clean
close, and the well-behaved client next to it keeps its state and its data."""

import json
import os
import struct

import msgpack
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy import codec
from alpaca_proxy.credentials import Credentials
from alpaca_proxy.dialects.alpaca_data import DIALECTS
from alpaca_proxy.downstream.alpaca_data import AlpacaDataProtocol
from alpaca_proxy.downstream.client import ClientFactory
from alpaca_proxy.proxy import Limits, Proxy
from alpaca_proxy.streams import STOCKS, Stream
from alpaca_proxy.upstream.session import DataSession
from tests.fuzzing import examples, values

_log = Logger()
UPGRADE = (b"GET /v2/iex HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n%s\r\n")


def client_frame(payload: bytes, opcode: int) -> bytes:
    """One masked client frame, as a browser or SDK would send it."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Unmasked server frames in a byte string: (opcode, payload)."""
    frames = []
    while len(data) >= 2:
        opcode, size = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if size == 126:
            size, offset = struct.unpack("!H", data[2:4])[0], 4
        elif size == 127:
            size, offset = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((opcode, data[offset:offset + size]))
        data = data[offset + size:]
    return frames


class AcceptingLink:
    """An upstream link that takes every change at once, as a lenient upstream would."""

    def __init__(self):
        self.session = None
        self.held = set()

    def send_change(self, action, keys):
        if action == "subscribe":
            self.held.update(keys)
        else:
            self.held.difference_update(keys)
        self.session.acked(set(self.held))


class StubPool:
    """Every client authenticates into one upstream session that never connects."""

    def __init__(self, session):
        self.session = session

    def authenticate(self, stream, credentials):
        return succeed(self.session)

    def join(self, session, client):
        session.attach(client)

    def leave(self, session, client):
        session.detach(client)


def hostile_payloads():
    channel_names = st.sampled_from(["trades", "quotes", "bars", "news", "orderbooks",
                                     "statuses", "corrections", "nonsense", "action"])
    message = st.dictionaries(channel_names, st.one_of(
        values, st.sampled_from(["auth", "subscribe", "unsubscribe"]),
        st.lists(st.text(max_size=12), max_size=8)), max_size=6)
    as_json = message.map(lambda m: json.dumps(m, default=repr).encode())
    as_msgpack = message.map(lambda m: msgpack.packb(m, default=repr))
    huge = st.integers(0, 25000).map(lambda n: json.dumps(
        {"action": "subscribe", "trades": ["S%d" % i for i in range(n)]}).encode())
    deep = st.integers(1, 3000).flatmap(lambda n: st.sampled_from([
        b"[" * n + b"]" * n, b"\x91" * n + b"\xc0", b'{"a":' * n + b"1" + b"}" * n]))
    wrong_types = st.sampled_from([
        b'{"action":"subscribe","trades":5}', b'{"action":"auth","key":[],"secret":{}}',
        b'{"action":null}', b"[]", b"[1,2,3]", b'"auth"', b"null", b"{}",
        b'[{"action":"auth","key":"k","secret":"s"}]' * 1,
    ])
    return st.one_of(st.binary(max_size=200), as_json, as_msgpack, huge, deep, wrong_types)


class HandlerFuzzTests(SynchronousTestCase):
    """Any frame from a client gets a reply or a clean close; other clients lose nothing."""

    tried = 0

    def setUp(self):
        self.clock = Clock()
        self.session = DataSession(Stream(STOCKS, "/v2/iex"), Credentials("k", "s"),
                                   self.clock, DIALECTS[STOCKS])
        self.session.link = AcceptingLink()
        self.session.link.session = self.session
        self.session.link_ready()
        # No pings to clients: the clock moves on and these clients never answer one.
        proxy = Proxy(self.clock, StubPool(self.session), limits=Limits(ping_interval=0))
        self.factory = ClientFactory(proxy, AlpacaDataProtocol)
        self.good, self.good_transport = self.open(msgpack_encoding=True)
        self.send(self.good, {"action": "auth", "key": "k", "secret": "s"})
        self.send(self.good, {"action": "subscribe", "trades": ["AAPL"]})
        self.good_transport.clear()

    def tearDown(self):
        _log.info("handler fuzz: {tried} hostile frames tried", tried=HandlerFuzzTests.tried)

    def open(self, msgpack_encoding=False):
        client = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        client.makeConnection(transport)
        header = b"Content-Type: application/msgpack\r\n" if msgpack_encoding else b""
        client.dataReceived(UPGRADE % (header,))
        self.assertIn(b"101 Switching Protocols", transport.value())
        transport.clear()
        return client, transport

    def send(self, client, message):
        client.dataReceived(client_frame(msgpack.packb(message), 2))

    def good_still_served(self):
        """The well-behaved client's state is intact and it gets its data."""
        self.assertEqual(self.session.router.state(self.good), {"trades": {"AAPL": None}})
        self.session.received([codec.Element.of({"T": "t", "S": "AAPL", "p": 1.0})], 0)
        [(opcode, payload)] = server_frames(self.good_transport.value())
        self.assertEqual(msgpack.unpackb(payload)[0]["S"], "AAPL")
        self.good_transport.clear()

    @examples(deep=1200)
    @given(hostile_payloads(), st.sampled_from([1, 2]), st.booleans(), st.booleans())
    def test_hostile_frames(self, payload, opcode, authenticated, msgpack_encoding):
        """Arbitrary bytes, wrong types, huge lists, deep nesting, bad UTF-8 in text frames."""
        HandlerFuzzTests.tried += 1
        client, transport = self.open(msgpack_encoding)
        if authenticated:
            self.send(client, {"action": "auth", "key": "k", "secret": "s"})
        transport.clear()
        client.dataReceived(client_frame(payload, opcode))
        self.clock.advance(0.5)  # the session paces what it sends upstream
        frames = server_frames(transport.value())
        self.assertTrue(frames or transport.disconnecting, (payload[:80], frames))
        closes = [f for f in frames if f[0] == 8]
        if not closes and not transport.disconnecting:
            # Replies are well-formed arrays of messages in the client's encoding.
            for frame_opcode, reply in frames:
                decoded = msgpack.unpackb(reply) if frame_opcode == 2 else json.loads(reply)
                self.assertIsInstance(decoded, list)
        client.connectionLost(Failure(ConnectionDone()))
        self.good_still_served()


