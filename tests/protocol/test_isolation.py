"""No client can hurt another: each bound the proxy puts on what one client may make it
hold or do, at the protocol level (iosim, one Clock, no sockets)."""

import json

import msgpack
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy import codec
from alpaca_proxy.credentials import Credentials
from alpaca_proxy.downstream.client import MAX_FRAGMENTS, MAX_UNAUTHENTICATED_MESSAGE
from alpaca_proxy.proxy import FREE_FAILURES, Limits
from alpaca_proxy.service import Settings, build
from alpaca_proxy.upstream.session import CHANGE_BURST, CHANGES_PER_SECOND
from alpaca_proxy.web import IDLE_TIMEOUT, REQUEST_DEADLINE
from tests.protocol.wire import PAIR, Client, IosimProxy


class Deaf(Client):
    """A client whose websocket library never answers pings."""

    def onPing(self, payload):
        pass


class ClientBoundsTests(IosimProxy, SynchronousTestCase):
    def setUp(self):
        self.build(Limits(buffer_bytes=4096, symbols_per_request=1000, symbols_per_client=2000,
                          ping_interval=0))

    def test_pongs_count_against_the_buffer(self):
        """A client that pings and never reads is cut off once its pongs pile up."""
        client = self.login()
        client.server._backpressure.pauseProducing()  # what a full socket buffer does
        for _ in range(3):  # each queued pong is charged 1 KiB of the 4 KiB
            client.sendPing(b"p" * 100)
        self.flush()
        self.assertEqual(self.proxy.stats.slow_clients, 0)
        for _ in range(2):
            client.sendPing(b"p" * 100)
        self.flush()
        self.assertEqual(self.proxy.stats.slow_clients, 1)
        self.assertNotIn(client.server, self.proxy.clients)

    def test_pongs_flow_while_the_client_reads(self):
        """A reading client's pings are answered, however many."""
        client = self.login()
        pongs = []
        client.onPong = pongs.append
        for _ in range(200):
            client.sendPing(b"p" * 100)
        self.flush()
        self.assertEqual(len(pongs), 200)
        self.assertIn(client.server, self.proxy.clients)

    def test_big_message_before_auth_is_refused_unread(self):
        """Before authenticating, a message over 16 KiB closes the connection (1009)."""
        client = self.connect()
        client.sendMessage(msgpack.packb([None] * (MAX_UNAUTHENTICATED_MESSAGE + 1)), True)
        self.flush()
        self.assertEqual(client.close_code, 1009)

    def test_subscribe_while_the_verdict_is_pending(self):
        """Credentials presented, verdict pending: a 100 KB subscribe waits for it (up to
        256 KiB may), and is answered once the client is accepted."""
        from twisted.internet.defer import Deferred

        verdict = Deferred()
        self.proxy.pool.authenticate = lambda stream, credentials: verdict
        self.proxy.limits = Limits(symbols_per_request=20000, symbols_per_client=20000,
                                   ping_interval=0)
        client = self.connect()
        client.send({"action": "auth", "key": PAIR.key, "secret": PAIR.secret})
        client.send({"action": "subscribe", "bars": ["S%05d" % n for n in range(15000)]})
        self.flush()
        self.assertIsNone(client.close_code)
        verdict.callback(self.session)
        self.flush()
        for _ in range(100):  # upstream acknowledges each chunk as the session sends it
            if not self.session.router.waiting:
                break
            self.clock.advance(0.1)
            self.session.acked(set(self.session.router.wanted))
            self.flush()
        frames = client.take()
        self.assertEqual(frames[1], [{"T": "success", "msg": "authenticated"}])
        self.assertEqual(len(frames[2][0]["bars"]), 15000)

    def test_unfinished_message_before_auth_is_bounded(self):
        """Fragments of a message before auth count towards the same 16 KiB."""
        client = self.connect()
        client.sendMessage(b"x" * (MAX_UNAUTHENTICATED_MESSAGE + 1024), True, fragmentSize=1024)
        self.flush()
        self.assertEqual(client.close_code, 1009)

    def test_too_many_fragments(self):
        """A message in more than 1,024 frames closes the connection, however small."""
        client = self.login()
        payload = json.dumps({"action": "subscribe", "trades": ["A"]}).encode()
        client.sendMessage(payload.ljust(MAX_FRAGMENTS + 1), False, fragmentSize=1)
        self.flush()
        self.assertEqual(client.close_code, 1009)

    def test_huge_array_refused_from_its_header(self):
        """An array header claiming 7.8 M elements is refused with 400, nothing decoded."""
        client = self.login()
        client.sendMessage(b"\xdd" + (7_800_000).to_bytes(4, "big") + b"\xc0" * 64, True)
        client.send([{"action": "subscribe", "trades": ["A"]}] * (codec.MAX_BATCH + 1))
        self.flush()
        self.assertEqual(client.take(), [[{"T": "error", "code": 400, "msg": "invalid syntax"}]] * 2)
        self.assertIn(client.server, self.proxy.clients)

    def test_pipelined_requests_cannot_pass_the_symbol_limit(self):
        """Thirty 1,000-symbol subscribes sent at once: the limit counts waiting requests."""
        client = self.login()
        for batch in range(30):
            client.send({"action": "subscribe",
                         "trades": ["S%d_%d" % (batch, i) for i in range(1000)]})
        self.flush()
        refusals = [f for f in client.take() if f[0].get("code") == 405]
        self.assertEqual(len(refusals), 28)
        while self.session.router.waiting:
            self.session.acked(set(self.session.router.wanted))
            self.flush()
        self.assertEqual(self.session.subscriptions_of(client.server), 2000)

    def test_clients_that_never_answer_pings_are_dropped(self):
        """With client pings on, a client that stops answering is dropped; one that
        answers stays."""
        self.build(Limits(ping_interval=1.0, ping_timeout=2.0))
        deaf, polite = self.login_as(Deaf), self.login()
        for _ in range(6):
            self.clock.advance(0.5)
            self.flush()
        self.assertNotIn(deaf.server, self.proxy.clients)
        self.assertIn(polite.server, self.proxy.clients)

    def test_clients_per_address_bounded(self):
        """Past --max-clients-per-address, another upgrade from a remote address gets 503;
        when one leaves, a new one may come. (Loopback peers are bounded by --max-clients.)"""
        import tests.protocol.wire as wire

        self.patch(wire, "PEER", "10.1.2.3")
        self.build(Limits(clients_per_address=2, ping_interval=0))
        first, _ = self.login(), self.login()
        third = self.connect()
        self.assertEqual(third.close_code, 1006)  # refused at the handshake
        self.assertEqual(self.proxy.stats.refused[503], 1)
        first.sendClose()
        self.flush()
        self.login()
        self.assertEqual(self.proxy.addresses["10.1.2.3"], 2)

    def login_as(self, protocol):
        original = Client
        try:
            import tests.protocol.wire as wire
            wire.Client = protocol
            return self.login()
        finally:
            wire.Client = original


class AuthGuessingTests(IosimProxy, SynchronousTestCase):
    def setUp(self):
        self.build()

    def attempt(self, secret):
        client = self.connect()
        client.take()
        client.send({"action": "auth", "key": PAIR.key, "secret": secret})
        self.flush()
        return client

    def test_failures_are_slowed_per_address_and_the_right_pair_is_not(self):
        """Past a few failures from one address, 402 comes later and later; the right
        pair from the same address is answered at once."""
        for _ in range(FREE_FAILURES):
            self.assertEqual(self.attempt("wrong").take()[0][0]["code"], 402)
        slowed = self.attempt("wrong")
        self.assertEqual(slowed.take(), [])
        right = self.attempt(PAIR.secret)
        self.assertEqual(right.take(), [[{"T": "success", "msg": "authenticated"}]])
        self.clock.advance(0.05)
        self.flush()
        self.assertEqual(slowed.take()[0][0]["code"], 402)


class PacingTests(IosimProxy, SynchronousTestCase):
    def test_upstream_changes_are_paced(self):
        """However fast changes come, a session sends a burst, then 20 a second."""
        self.build()
        for n in range(40):
            self.session.send_change("subscribe", [("trades", "S%d" % n)])
        self.assertEqual(len(self.link.changes), CHANGE_BURST)
        for _ in range(20):
            self.clock.advance(1 / CHANGES_PER_SECOND)
        self.assertEqual(len(self.link.changes), CHANGE_BURST + CHANGES_PER_SECOND)
        self.clock.advance(1.0)
        self.assertEqual(len(self.link.changes), 40)


class SiteOverStrings:
    """Mixin: the proxy's site, its connections over StringTransport, on a Clock."""

    def setUp(self):
        self.clock = Clock()
        built = build(Settings(data_url=lambda: "ws://upstream.test",
                               trading_url=lambda: "ws://upstream.test",
                               polygon_url=lambda: "ws://upstream.test"),
                      reactor=None, clock=self.clock)
        self.site = built.site

    def connect(self):
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport


class HttpDeadlineTests(SiteOverStrings, SynchronousTestCase):

    def test_slow_request_head_is_cut_off(self):
        """A byte now and then does not keep a connection: the head has 10 s from accept."""
        channel, transport = self.connect()
        for byte in b"GET /status.json HT":
            channel.dataReceived(bytes([byte]))
            self.clock.advance(REQUEST_DEADLINE / 40)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(REQUEST_DEADLINE)
        self.assertTrue(transport.disconnecting)

    def test_idle_connection_closed(self):
        """A complete request is answered; the idle connection then closes after 30 s."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.clock.advance(REQUEST_DEADLINE + 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(IDLE_TIMEOUT)
        self.assertTrue(transport.disconnecting)

    def test_foreign_host_refused(self):
        """While listening on loopback, a Host that is not a loopback name gets 403."""
        self.site.proxy.hosts = frozenset({"proxy.internal"})
        for host, status in ((b"evil.example", b"403"), (b"localhost:8765", b"200"),
                             (b"127.0.0.1:8765", b"200"), (b"[::1]:8765", b"200"),
                             (b"proxy.internal", b"200"), (b"127.evil.example", b"403")):
            channel, transport = self.connect()
            channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n" % (host,))
            self.assertIn(b"HTTP/1.1 " + status, transport.value(), host)


class CredentialsTests(SynchronousTestCase):
    def test_fingerprint_names_the_pair_not_the_secret(self):
        """Fingerprints differ by secret and do not contain it."""
        a, b = Credentials("K", "secret-one"), Credentials("K", "secret-two")
        self.assertNotEqual(a.fingerprint, b.fingerprint)
        self.assertNotIn("secret", a.fingerprint)


class HttpBodyTests(SiteOverStrings, SynchronousTestCase):
    def test_declared_big_body_refused_before_it_arrives(self):
        """Content-Length over 1 MiB: 413 at once, and the connection stops being read."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /v2/orders HTTP/1.1\r\nHost: localhost\r\n"
                             b"Content-Length: 999999999\r\n\r\n" + b"x" * 1000)
        self.assertIn(b"413 Payload Too Large", transport.value())
        self.assertEqual(transport.producerState, "paused")
        self.assertTrue(transport.disconnecting)

    def test_chunked_body_refused_once_past_the_limit(self):
        """A chunked body is refused as soon as it passes 1 MiB, not buffered whole."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /v2/orders HTTP/1.1\r\nHost: localhost\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        for _ in range(17):
            channel.dataReceived(chunk)
        self.assertIn(b"413 Payload Too Large", transport.value())
        self.assertTrue(transport.disconnecting)
