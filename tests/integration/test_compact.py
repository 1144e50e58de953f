"""An authenticated connection keeps only what it does not share with the others
(``ClientProtocol._compact``), and behaves exactly as before."""

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.integration.test_proxy import trade
from tests.support import Harness


class CompactTests(TestCase):
    @defer.inlineCallbacks
    def test_an_idle_client_holds_few_attributes_and_still_works(self):
        """Past authentication the connection's own attributes are few (Autobahn
        gives it about 115); data, acks and the close handshake are unchanged."""
        harness = yield Harness(self).start()
        client = yield harness.login()
        [server] = list(harness.proxy.clients)
        self.assertLessEqual(len(vars(server)), 40, sorted(vars(server)))
        self.assertEqual(server.maxFramePayloadSize, type(server).maxFramePayloadSize)
        self.assertNotIn("maxFramePayloadSize", vars(server))
        client.send({"action": "subscribe", "trades": ["AAPL"]})
        yield client.next()
        harness.upstream.inject([trade("AAPL")])
        [message] = yield client.next()
        self.assertEqual((message["T"], message["S"]), ("t", "AAPL"))
        client.sendClose()
        code = yield client.closed
        self.assertEqual(code, 1000)
        self.assertTrue(server.wasClean)
