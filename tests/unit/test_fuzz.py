"""Property-based tests: no input makes the codecs or the dialects misbehave."""

import msgpack
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy import codec
from alpaca_proxy.dialects import polygon
from alpaca_proxy.dialects.alpaca_data import DIALECTS, ProtocolError
from tests.fuzzing import examples, values

EXAMPLES = examples(deep=1500)

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
