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

    def test_split_reads_type_and_symbol_without_decoding(self):
        """T and S come from the bytes, wherever they are in the map; the map itself
        is decoded only when asked for, and then equals upstream's."""
        messages = [{"T": "t", "S": "AAPL", "p": 1.5}, {"x": 1, "S": "BTC/USD", "T": "o"},
                    {"T": "n", "symbols": ["AAPL"]}]
        elements = codec.split_frame(msgpack.packb(messages))
        self.assertEqual([(e.kind, e.symbol) for e in elements],
                         [("t", "AAPL"), ("o", "BTC/USD"), ("n", None)])
        self.assertEqual([e._message for e in elements], [None, None, None])
        self.assertEqual([e.message for e in elements], messages)

    def test_odd_heads_take_the_exact_split(self):
        """A T or S that is not text, or keys that are not text, still split exactly
        (decoded at once); such an S routes by the message, not as a symbol."""
        messages = [{"T": "t", "S": 5}, {"T": 7, "S": "A"}, {b"k": 1, "T": "q", "S": "B"}]
        frame = msgpack.packb(messages, use_bin_type=True)
        elements = codec.split_frame(frame)
        self.assertEqual(b"\x93" + b"".join(e.raw for e in elements), frame)
        self.assertEqual([(e.kind, e.symbol) for e in elements],
                         [("t", None), (None, None), ("q", None)])
        self.assertEqual(elements[2].message, {b"k": 1, "T": "q", "S": "B"})

    def test_text_that_is_not_utf8_costs_only_its_message(self):
        """The split does not decode every string: a message with a broken one still
        goes out byte for byte, and renders as JSON with replacement characters."""
        good = msgpack.packb({"T": "t", "S": "A", "x": "ok"})
        broken = good[:-3] + b"\xa1\xff"  # "x": "\xff", not UTF-8
        elements = codec.split_frame(b"\x92" + good + broken)
        self.assertEqual([e.raw for e in elements], [good, broken])
        self.assertEqual(orjson.loads(elements[1].json), {"T": "t", "S": "A", "x": "\ufffd"})

    def test_split_rejects_trailing_bytes(self):
        """Bytes after the frame's last element make it undecodable."""
        self.assertRaises(codec.DecodeError, codec.split_frame, self.frame + b"\x00")

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
