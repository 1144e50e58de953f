"""Unit tests for the wire codecs."""

import msgpack
import orjson
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy import codec


def ts(seconds, nanos=0):
    return msgpack.Timestamp(seconds, nanos)


class TimestampTests(SynchronousTestCase):
    def test_fraction_trimmed(self):
        """Trailing zeros of the fraction are trimmed, as Go's RFC3339Nano does."""
        self.assertEqual(codec.rfc3339(ts(1714658587, 120450000)), "2024-05-02T14:03:07.12045Z")

    def test_no_fraction_when_zero(self):
        """A whole second has no fraction at all."""
        self.assertEqual(codec.rfc3339(ts(1714658580)), "2024-05-02T14:03:00Z")

    def test_nine_digits(self):
        """Nanosecond precision is kept."""
        self.assertEqual(codec.rfc3339(ts(0, 1)), "1970-01-01T00:00:00.000000001Z")


class DecodeTests(SynchronousTestCase):
    def test_json_in_binary_frame(self):
        """JSON is recognised by content, whatever frame type carried it."""
        self.assertEqual(codec.decode(b' {"action":"auth"}'), {"action": "auth"})

    def test_msgpack(self):
        """A MessagePack map decodes to a dict."""
        self.assertEqual(codec.decode(msgpack.packb({"action": "x"})), {"action": "x"})

    def test_garbage(self):
        """Neither JSON nor MessagePack raises DecodeError."""
        for payload in [b"{nope", b"\xc1", b"", b"\x92\x01"]:
            self.assertRaises(codec.DecodeError, codec.decode, payload)


class FrameTests(SynchronousTestCase):
    def setUp(self):
        self.messages = [
            {"T": "t", "S": "AAPL", "i": 1, "p": 1.25, "t": ts(1714658587, 120455000)},
            {"T": "q", "S": "MSFT", "bp": 1.0, "t": ts(1714658587)},
        ]
        self.frame = msgpack.packb(self.messages, datetime=False)

    def test_split_keeps_bytes(self):
        """Each element's raw bytes are exactly its bytes in the upstream frame."""
        elements = codec.split_frame(self.frame)
        self.assertEqual([e.message for e in elements], self.messages)
        self.assertEqual(b"\x92" + b"".join(e.raw for e in elements), self.frame)

    def test_lone_map_is_one_element(self):
        """A frame that is a single map counts as an array of one."""
        elements = codec.split_frame(msgpack.packb(self.messages[0], datetime=False))
        self.assertEqual([e.message for e in elements], self.messages[:1])

    def test_split_rejects_non_maps(self):
        """Elements that are not maps, or truncated frames, raise DecodeError."""
        self.assertRaises(codec.DecodeError, codec.split_frame, msgpack.packb([1]))
        self.assertRaises(codec.DecodeError, codec.split_frame, self.frame[:-3])

    def test_msgpack_frames_splice_elements(self):
        """A MessagePack batch of a subset is the elements' bytes under a new header."""
        elements = codec.split_frame(self.frame)
        [frame] = codec.MSGPACK.frames(elements[1:])
        self.assertEqual(frame, b"\x91" + elements[1].raw)
        decoded = msgpack.unpackb(frame, timestamp=0)
        self.assertIsInstance(decoded[0]["t"], msgpack.Timestamp)

    def test_json_frames(self):
        """JSON keeps key order with T first and renders timestamps as text."""
        [frame] = codec.JSON.frames(codec.split_frame(self.frame))
        self.assertEqual(
            frame,
            b'[{"T":"t","S":"AAPL","i":1,"p":1.25,"t":"2024-05-02T14:03:07.120455Z"},'
            b'{"T":"q","S":"MSFT","bp":1.0,"t":"2024-05-02T14:03:07Z"}]',
        )

    def test_batches_stay_under_one_mebibyte(self):
        """Large batches are split so no outgoing message exceeds 1 MiB."""
        big = [{"T": "n", "content": "x" * 100_000, "i": n} for n in range(25)]
        elements = codec.split_frame(msgpack.packb(big))
        for encoding in (codec.JSON, codec.MSGPACK):
            frames = list(encoding.frames(elements))
            self.assertGreater(len(frames), 1)
            self.assertTrue(all(len(f) <= codec.MAX_MESSAGE_BYTES for f in frames))
            decoded = [m for f in frames for m in codec.decode(f)]
            self.assertEqual(decoded, big)

    def test_control_alone_in_array(self):
        """Control messages are arrays of exactly one element."""
        self.assertEqual(
            orjson.loads(codec.JSON.control({"T": "success", "msg": "connected"})),
            [{"T": "success", "msg": "connected"}],
        )
        self.assertEqual(
            msgpack.unpackb(codec.MSGPACK.control({"T": "error", "code": 400})),
            [{"T": "error", "code": 400}],
        )

    def test_encoding_for_content_type(self):
        """The upgrade Content-Type picks the encoding; absent means JSON."""
        self.assertIs(codec.encoding_for("application/msgpack"), codec.MSGPACK)
        self.assertIs(codec.encoding_for(None), codec.JSON)
        self.assertIs(codec.encoding_for("application/json"), codec.JSON)
