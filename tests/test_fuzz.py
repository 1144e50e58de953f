"""Property-based tests: no input makes the codecs or the client handler misbehave."""

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy import codec
from alpaca_proxy.dialects import polygon
from alpaca_proxy.dialects.alpaca_data import DIALECTS, ProtocolError

EXAMPLES = settings(max_examples=1500, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
    st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=30)
extensions = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=16))
timestamps = st.builds(msgpack.Timestamp, st.integers(0, 2 ** 33), st.integers(0, 999_999_999))
fields = st.one_of(values, extensions, timestamps)


class CodecFuzzTests(SynchronousTestCase):
    @EXAMPLES
    @given(st.binary(max_size=300))
    def test_decode_any_bytes(self, payload):
        """Any bytes decode or raise DecodeError, nothing else."""
        try:
            codec.decode(payload)
        except codec.DecodeError:
            pass

    @EXAMPLES
    @given(st.binary(max_size=300))
    def test_split_any_frame(self, frame):
        """Any upstream frame splits into maps or raises DecodeError, nothing else."""
        try:
            elements = codec.split_frame(frame)
        except codec.DecodeError:
            return
        for element in elements:
            self.assertIsInstance(element.message, dict)

    @EXAMPLES
    @given(st.lists(st.dictionaries(st.one_of(st.text(max_size=6), st.binary(max_size=4)),
                                    fields, max_size=6), max_size=6))
    def test_any_upstream_message_renders_in_both_encodings(self, messages):
        """Whatever maps upstream sends, both encodings render them, bytes kept for msgpack."""
        frame = msgpack.packb(messages, datetime=False)
        elements = codec.split_frame(frame)
        self.assertEqual(b"".join(codec.MSGPACK.frames(elements)), frame if messages else b"")
        for rendered in codec.JSON.frames(elements):
            self.assertEqual(rendered[:1], b"[")


class DialectFuzzTests(SynchronousTestCase):
    @EXAMPLES
    @given(st.sampled_from(sorted(DIALECTS)),
           st.one_of(values, st.dictionaries(
               st.sampled_from(["action", "trades", "quotes", "bars", "news", "orderbooks",
                                "key", "secret", "statuses", "corrections"]),
               st.one_of(values, st.sampled_from(["auth", "subscribe", "unsubscribe"])),
               max_size=6)))
    def test_parse_any_message(self, kind, message):
        """Any decoded message is a request or a ProtocolError with a known code."""
        try:
            DIALECTS[kind].parse(message)
        except ProtocolError as refused:
            self.assertIn(refused.code, (400, 410, 413))


# -- the client handler, at the byte level -------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import struct  # noqa: E402

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.defer import succeed  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.logger import Logger  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from alpaca_proxy.credentials import Credentials  # noqa: E402
from alpaca_proxy.downstream.alpaca_data import AlpacaDataProtocol  # noqa: E402
from alpaca_proxy.downstream.client import ClientFactory  # noqa: E402
from alpaca_proxy.proxy import Proxy  # noqa: E402
from alpaca_proxy.streams import STOCKS, Stream  # noqa: E402
from alpaca_proxy.upstream.session import DataSession  # noqa: E402

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
        self.factory = ClientFactory(Proxy(self.clock, StubPool(self.session)),
                                     AlpacaDataProtocol)
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

    @settings(max_examples=1200, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(hostile_payloads(), st.sampled_from([1, 2]), st.booleans(), st.booleans())
    def test_hostile_frames(self, payload, opcode, authenticated, msgpack_encoding):
        """Arbitrary bytes, wrong types, huge lists, deep nesting, bad UTF-8 in text frames."""
        HandlerFuzzTests.tried += 1
        client, transport = self.open(msgpack_encoding)
        if authenticated:
            self.send(client, {"action": "auth", "key": "k", "secret": "s"})
        transport.clear()
        client.dataReceived(client_frame(payload, opcode))
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


class PolygonFuzzTests(SynchronousTestCase):
    @EXAMPLES
    @given(st.one_of(values, st.fixed_dictionaries(
        {"action": st.sampled_from(["auth", "subscribe", "unsubscribe", "x"])},
        optional={"params": st.one_of(values, st.text(
            alphabet="TQAM.*,:-/ XBC9", max_size=40))})))
    def test_any_client_message(self, message):
        """Any client message is a request or a status reply, and acks name what was asked."""
        try:
            request = polygon.parse(message)
        except polygon.PolygonError as refused:
            self.assertEqual(refused.reply["ev"], "status")
            return
        if isinstance(request, polygon.PolygonChange):
            asked = {(ev, s) for ev, symbols in request.change.channels.items() for s in symbols}
            acked = set()
            for status in polygon.acknowledgements(request.change.action, request.params):
                action, keys = polygon.acknowledged(status)
                self.assertEqual(action, request.change.action)
                acked.update(keys)
            self.assertEqual(acked, asked)

    @EXAMPLES
    @given(st.binary(max_size=300))
    def test_any_upstream_json_frame(self, frame):
        """Any frame from a Polygon upstream splits into objects or raises DecodeError."""
        try:
            elements = codec.split_json_frame(frame)
        except codec.DecodeError:
            return
        for element in elements:
            polygon.DIALECTS["stocks"].routing(element.message)
            self.assertEqual(element.json[:1], b"{")
