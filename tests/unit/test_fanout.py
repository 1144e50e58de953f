"""Fan-out by audiences: who gets which messages of a frame, encoded how often."""

import msgpack
import orjson
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy import codec, fanout


class Prepared:
    def __init__(self, payload, binary):
        self.payload, self.binary = payload, binary


class Client:
    """Records the payloads it is sent; counts what it prepares."""

    messages_sent = 0

    def __init__(self, name, encoding=codec.MSGPACK):
        self.name, self.encoding = name, encoding
        self.payloads = []
        self.prepared = 0

    def prepare(self, payload, binary):
        self.prepared += 1
        return Prepared(payload, binary)

    def send_prepared(self, prepared):
        self.payloads.append(prepared.payload)

    def __repr__(self):
        return "<Client %s>" % (self.name,)


class DeliverTests(SynchronousTestCase):
    def setUp(self):
        self.messages = [{"T": "t", "S": "S%d" % n, "i": n} for n in range(5)]
        self.elements = codec.split_frame(msgpack.packb(self.messages))

    def received(self, client):
        return [message for payload in client.payloads
                for message in (msgpack.unpackb(payload) if client.encoding is codec.MSGPACK
                                else orjson.loads(payload))]

    def test_a_client_in_several_audiences_gets_each_message_once_in_order(self):
        """The union of its audiences' messages, in upstream order, in one frame."""
        a, b, c = Client("a"), Client("b"), Client("c", codec.JSON)
        audiences = {frozenset({a, b}): [0, 3], frozenset({a}): [1, 4],
                     frozenset({a, c}): [2, 3]}
        messages, size = fanout.deliver(self.elements, audiences)
        self.assertEqual(self.received(a), self.messages)
        self.assertEqual(len(a.payloads), 1)
        self.assertEqual(self.received(b), [self.messages[0], self.messages[3]])
        self.assertEqual(self.received(c), [self.messages[2], self.messages[3]])
        self.assertEqual((a.messages_sent, b.messages_sent, c.messages_sent), (5, 2, 2))
        self.assertEqual(messages, 9)
        self.assertEqual(size, sum(len(p) for x in (a, b, c) for p in x.payloads))

    def test_a_client_in_every_audience_gets_the_whole_frame_in_order(self):
        """A wildcard client shares each message's audience with that message's own
        subscriber: it gets all of them once, in order; each other client its own."""
        messages = [{"T": "t", "S": "S%d" % n, "i": n} for n in range(300)]
        elements = codec.split_frame(msgpack.packb(messages))
        wildcard = Client("*")
        singles = [Client(str(n)) for n in range(300)]
        audiences = {frozenset({wildcard, single}): [n] for n, single in enumerate(singles)}
        fanout.deliver(elements, dict(reversed(audiences.items())))
        self.assertEqual(self.received(wildcard), messages)
        self.assertEqual([self.received(c) for c in singles[:3]], [[m] for m in messages[:3]])
        self.assertEqual(list(audiences.values())[:2], [[0], [1]])  # shared lists untouched

    def test_one_encoded_frame_per_audience_and_encoding(self):
        """Everyone wanting the same messages in the same encoding shares one frame."""
        readers = [Client(str(n)) for n in range(50)] + [Client("j", codec.JSON)]
        fanout.deliver(self.elements, {frozenset(readers): [0, 1, 2, 3, 4]})
        self.assertEqual(sum(r.prepared for r in readers), 2)
        self.assertEqual({r.payloads[0] for r in readers[:50]}, {msgpack.packb(self.messages)})
        self.assertEqual(self.received(readers[-1]), self.messages)

    def test_other_nodes_get_nothing_here(self):
        """A client without an encoding (another node, --bus) is skipped."""
        node, a = Client("node", None), Client("a")
        fanout.deliver(self.elements, {frozenset({node, a}): [0]})
        self.assertEqual((node.payloads, self.received(a)), ([], self.messages[:1]))
