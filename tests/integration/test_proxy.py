"""The proxy end to end: real Autobahn clients, the proxy, a fake upstream, all on loopback."""

import base64

import msgpack
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from alpaca_proxy.codec import MAX_MESSAGE_BYTES
from tests.support import KEY, SECRET, Harness, turn


def trade(symbol, seconds=1714658587, nanos=120450000, **extra):
    return {"T": "t", "S": symbol, "i": 7, "x": "V", "p": 117.22, "s": 100, "c": ["@"],
            "z": "C", "t": msgpack.Timestamp(seconds, nanos), **extra}


def quote(symbol):
    return {"T": "q", "S": symbol, "bx": "P", "bp": 117.21, "bs": 3, "ax": "Q", "ap": 117.24,
            "as": 2, "c": ["R"], "z": "C", "t": msgpack.Timestamp(1714658587, 0)}


EMPTY_STOCK_ACK = {"T": "subscription", "trades": [], "quotes": [], "bars": [],
                   "updatedBars": [], "dailyBars": [], "statuses": [], "lulds": [],
                   "corrections": [], "cancelErrors": []}


def ack(**channels):
    message = dict(EMPTY_STOCK_ACK)
    message.update(channels)
    message["corrections"] = message["cancelErrors"] = message["trades"]
    return [message]


class HandshakeTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def setUp(self):
        self.harness = yield Harness(self).start()

    @defer.inlineCallbacks
    def test_welcome_then_authenticated_in_json_text_frames(self):
        """No Content-Type: JSON in text frames; welcome, then authenticated."""
        client = yield self.harness.login()
        self.assertEqual(client.binary_flags, [False, False])

    @defer.inlineCallbacks
    def test_msgpack_client_gets_binary_frames(self):
        """Content-Type application/msgpack: MessagePack in binary frames."""
        client = yield self.harness.login(msgpack_encoding=True)
        self.assertEqual(client.binary_flags, [True, True])

    @defer.inlineCallbacks
    def test_early_auth_still_gets_welcome_first(self):
        """Auth sent the moment the socket opens (JS SDK) is answered after the welcome."""
        client = yield self.harness.connect(on_open=lambda c: c.send(
            {"action": "auth", "key": KEY, "secret": SECRET}))
        self.assertEqual((yield client.next()), [{"T": "success", "msg": "connected"}])
        self.assertEqual((yield client.next()), [{"T": "success", "msg": "authenticated"}])

    @defer.inlineCallbacks
    def test_wrong_credentials_402(self):
        """A pair other than the configured one gets 402 auth failed."""
        client = yield self.harness.connect()
        yield client.next()
        client.send({"action": "auth", "key": KEY, "secret": "wrong"})
        self.assertEqual((yield client.next()),
                         [{"T": "error", "code": 402, "msg": "auth failed"}])

    @defer.inlineCallbacks
    def test_subscribe_before_auth_401_and_second_auth_403(self):
        """Subscribing first is 401; authenticating twice is 403."""
        client = yield self.harness.connect()
        yield client.next()
        client.send({"action": "subscribe", "trades": ["AAPL"]})
        self.assertEqual((yield client.next()),
                         [{"T": "error", "code": 401, "msg": "not authenticated"}])
        client.send({"action": "auth", "key": KEY, "secret": SECRET})
        yield client.next()
        client.send({"action": "auth", "key": KEY, "secret": SECRET})
        self.assertEqual((yield client.next()),
                         [{"T": "error", "code": 403, "msg": "already authenticated"}])

    @defer.inlineCallbacks
    def test_header_auth(self):
        """Key headers on the upgrade authenticate without a message."""
        client = yield self.harness.connect(
            headers={"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET})
        self.assertEqual((yield client.next()), [{"T": "success", "msg": "connected"}])
        self.assertEqual((yield client.next()), [{"T": "success", "msg": "authenticated"}])
        client.send({"action": "auth", "key": KEY, "secret": SECRET})
        self.assertEqual((yield client.next())[0]["code"], 403)

    @defer.inlineCallbacks
    def test_basic_auth_header(self):
        """HTTP Basic on the upgrade authenticates too."""
        token = base64.b64encode(("%s:%s" % (KEY, SECRET)).encode()).decode()
        client = yield self.harness.connect(headers={"Authorization": "Basic " + token})
        yield client.next()
        self.assertEqual((yield client.next()), [{"T": "success", "msg": "authenticated"}])

    @defer.inlineCallbacks
    def test_auth_timeout_404_then_close(self):
        """Without auth within the deadline: 404 auth timeout, then the socket closes."""
        client = yield self.harness.connect()
        yield client.next()
        self.harness.clock.advance(9.9)
        self.assertEqual(list(client.frames), [])
        self.harness.clock.advance(0.2)
        self.assertEqual((yield client.next()), [{"T": "error", "code": 404, "msg": "auth timeout"}])
        yield client.closed

    @defer.inlineCallbacks
    def test_authenticated_client_has_no_deadline(self):
        """The deadline does not touch a client that authenticated in time."""
        client = yield self.harness.login()
        self.harness.clock.advance(60)
        client.send({"action": "subscribe", "bars": ["*"]})
        self.assertEqual((yield client.next()), ack(bars=["*"]))

    @defer.inlineCallbacks
    def test_unknown_path_is_404_at_handshake(self):
        """Unknown paths are refused at the handshake with HTTP 404."""
        with self.assertRaises(ConnectionError):
            yield self.harness.connect(path="/v9/nothing")

    @defer.inlineCallbacks
    def test_odd_paths_accepted(self):
        """Query strings, doubled slashes and the root path reach a stocks endpoint."""
        for path in ["//v2/iex?x=1", "/", "/iex"]:
            client = yield self.harness.connect(path=path)
            self.assertEqual((yield client.next()), [{"T": "success", "msg": "connected"}])

    @defer.inlineCallbacks
    def test_bad_input_gets_400_and_connection_survives(self):
        """Garbage, unknown actions and bad symbols get 400; the session goes on."""
        client = yield self.harness.login()
        for payload in [b"{not json", b"\xc1\xc1", b'{"action":"dance"}',
                        b'{"action":"subscribe","trades":"AAPL"}',
                        b'{"action":"subscribe","trades":["A B"]}']:
            client.sendMessage(payload, isBinary=True)
            self.assertEqual((yield client.next()),
                             [{"T": "error", "code": 400, "msg": "invalid syntax"}])
        client.send({"action": "subscribe", "orderbooks": ["BTC/USD"]})
        self.assertEqual((yield client.next()),
                         [{"T": "error", "code": 410,
                           "msg": "invalid subscribe action for this feed"}])
        client.send({"action": "subscribe", "trades": ["AAPL"]})
        self.assertEqual((yield client.next()), ack(trades=["AAPL"]))

    @defer.inlineCallbacks
    def test_json_in_binary_frames_and_fragments(self):
        """JSON in binary frames (C#) and fragmented messages with an empty final frame."""
        client = yield self.harness.login()
        payload = msgpack.packb({"trades": ["AAPL"], "quotes": ["MSFT"], "action": "subscribe"})
        client.beginMessage(isBinary=True)
        for start in range(0, len(payload), 8):
            client.sendMessageFrame(payload[start:start + 8])
        client.sendMessageFrame(b"")
        client.endMessage()
        self.assertEqual((yield client.next()), ack(trades=["AAPL"], quotes=["MSFT"]))
        client.sendMessage(b'{"action":"unsubscribe","quotes":["MSFT"]}', isBinary=True)
        self.assertEqual((yield client.next()), ack(trades=["AAPL"]))


class RoutingTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def setUp(self):
        self.harness = yield Harness(self, symbol_limit=3).start()
        self.upstream = self.harness.upstream

    @defer.inlineCallbacks
    def test_each_client_gets_exactly_its_own_data(self):
        """Two clients, different symbols and encodings: each gets only what it asked for."""
        a = yield self.harness.login(msgpack_encoding=True)
        b = yield self.harness.login()
        a.send({"action": "subscribe", "trades": ["AAPL"], "quotes": ["AAPL"]})
        self.assertEqual((yield a.next()), ack(trades=["AAPL"], quotes=["AAPL"]))
        b.send({"action": "subscribe", "trades": ["MSFT"]})
        self.assertEqual((yield b.next()), ack(trades=["MSFT"]))
        frame = [trade("AAPL"), trade("MSFT"), quote("AAPL"), quote("MSFT"),
                 {"T": "c", "S": "MSFT", "x": "V", "oi": 1, "ci": 2, "t": msgpack.Timestamp(5, 0)}]
        self.upstream.inject(frame)
        self.assertEqual((yield a.next()), [trade("AAPL"), quote("AAPL")])
        got = yield b.next()
        self.assertEqual(got[0], {**trade("MSFT"), "t": "2024-05-02T14:03:07.12045Z"})
        self.assertEqual(got[1], {"T": "c", "S": "MSFT", "x": "V", "oi": 1, "ci": 2,
                                  "t": "1970-01-01T00:00:05Z"})
        self.assertEqual(len(got), 2)
        self.assertEqual(a.frames, type(a.frames)())

    @defer.inlineCallbacks
    def test_msgpack_elements_are_byte_exact(self):
        """MessagePack clients get upstream's element bytes unchanged (ext -1, key order)."""
        a = yield self.harness.login(msgpack_encoding=True)
        a.send({"action": "subscribe", "trades": ["AAPL"]})
        yield a.next()
        element = trade("AAPL", extra_field="kept", r=msgpack.Timestamp(1, 2))
        self.upstream.inject([element, trade("IBM")])
        yield a.next()
        self.assertEqual(a.raw[-1], b"\x91" + msgpack.packb(element, datetime=False))

    @defer.inlineCallbacks
    def test_union_subscribed_once_and_released_by_last(self):
        """Upstream sees one subscribe per union change and an unsubscribe when the last leaves."""
        a = yield self.harness.login()
        b = yield self.harness.login()
        a.send({"action": "subscribe", "trades": ["AAPL"]})
        yield a.next()
        b.send({"action": "subscribe", "trades": ["AAPL"], "bars": ["*"]})
        self.assertEqual((yield b.next()), ack(trades=["AAPL"], bars=["*"]))
        self.assertEqual(self.harness.upstream_messages(), [
            {"action": "subscribe", "trades": ["AAPL"]},
            {"action": "subscribe", "bars": ["*"]},
        ])
        a.send({"action": "unsubscribe", "trades": ["AAPL"]})
        self.assertEqual((yield a.next()), ack())
        self.assertEqual(len(self.harness.upstream_messages()), 2)
        b.sendClose()
        yield self.upstream.when(lambda: len(self.harness.upstream_messages()) == 3)
        self.assertEqual(self.harness.upstream_messages()[-1],
                         {"action": "unsubscribe", "bars": ["*"], "trades": ["AAPL"]})

    @defer.inlineCallbacks
    def test_no_data_after_unsubscribe_ack(self):
        """Once the ack removing a symbol is sent, no more of its data arrives."""
        a = yield self.harness.login()
        b = yield self.harness.login()
        for client in (a, b):
            client.send({"action": "subscribe", "trades": ["AAPL"]})
            yield client.next()
        a.send({"action": "unsubscribe", "trades": ["AAPL"]})
        yield a.next()
        self.upstream.inject([trade("AAPL")])
        yield b.next()
        # b's frame was sent after a's unsubscribe was processed; a got nothing.
        a.send({"action": "subscribe", "quotes": ["ZZZ"]})
        self.assertEqual((yield a.next()), ack(quotes=["ZZZ"]))

    @defer.inlineCallbacks
    def test_wildcard_and_news_style_fanout(self):
        """``*`` gets every symbol; each message once per client even if matched twice."""
        a = yield self.harness.login()
        a.send({"action": "subscribe", "trades": ["*", "AAPL"]})
        yield a.next()
        self.upstream.inject([trade("AAPL"), trade("ZZZ")])
        got = yield a.next()
        self.assertEqual([m["S"] for m in got], ["AAPL", "ZZZ"])

    @defer.inlineCallbacks
    def test_symbol_limit_405_goes_to_requester_only(self):
        """Upstream's 405 reaches only the client that asked; its state stays as it was."""
        a = yield self.harness.login()
        b = yield self.harness.login()
        a.send({"action": "subscribe", "trades": ["A1", "A2"]})
        yield a.next()
        b.send({"action": "subscribe", "quotes": ["B1", "B2"]})
        self.assertEqual((yield b.next()),
                         [{"T": "error", "code": 405, "msg": "symbol limit exceeded"}])
        b.send({"action": "subscribe", "quotes": ["A1"]})
        self.assertEqual((yield b.next()), ack(quotes=["A1"]))
        self.upstream.inject([trade("A1"), quote("A1")])
        self.assertEqual([m["T"] for m in (yield a.next())], ["t"])
        self.assertEqual([m["T"] for m in (yield b.next())], ["q"])

    @defer.inlineCallbacks
    def test_large_batches_split_under_one_mebibyte(self):
        """An upstream frame larger than 1 MiB once rendered reaches JSON clients in pieces."""
        a = yield self.harness.login()
        a.send({"action": "subscribe", "trades": ["*"]})
        yield a.next()
        big = [trade("S%d" % n, pad="x" * 2000) for n in range(800)]
        self.upstream.inject(big)
        received = []
        while len(received) < len(big):
            received += (yield a.next())
        self.assertEqual([m["S"] for m in received], ["S%d" % n for n in range(800)])
        self.assertTrue(all(len(raw) <= MAX_MESSAGE_BYTES for raw in a.raw))
        self.assertGreater(len(a.raw), 3)


class UpstreamLifecycleTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_one_upstream_for_many_clients_and_resubscribe_after_drop(self):
        """Clients share one upstream; after an unclean drop the union is replayed, clients stay."""
        harness = yield Harness(self).start()
        upstream = harness.upstream
        a = yield harness.login()
        b = yield harness.login(msgpack_encoding=True)
        a.send({"action": "subscribe", "trades": ["AAPL"]})
        yield a.next()
        b.send({"action": "subscribe", "quotes": ["MSFT"]})
        yield b.next()
        self.assertEqual(len(upstream.authenticated()), 1)
        [session] = upstream.authenticated()
        lost = harness.pool.sessions[0].next_disconnect()
        session.drop()
        yield lost
        yield turn()  # ClientService schedules its retry right after the loss
        harness.clock.advance(1.0)  # the first retry comes within a second
        yield upstream.when(lambda: any(
            c is not session and c.subscriptions.get("quotes") == ["MSFT"]
            for c in upstream.authenticated()))
        [replacement] = upstream.authenticated()
        self.assertEqual(replacement.subscriptions["trades"], ["AAPL"])
        self.assertEqual(harness.upstream_messages()[-1],
                         {"action": "subscribe", "quotes": ["MSFT"], "trades": ["AAPL"]})
        upstream.inject([trade("AAPL"), quote("MSFT")])
        self.assertEqual([m["S"] for m in (yield a.next())], ["AAPL"])
        self.assertEqual([m["S"] for m in (yield b.next())], ["MSFT"])

    @defer.inlineCallbacks
    def test_upstream_closed_cleanly_after_linger(self):
        """When the last client leaves, upstream is closed with a close handshake after linger."""
        harness = yield Harness(self, linger=0.2).start()
        upstream = harness.upstream
        a = yield harness.login()
        a.sendClose()
        yield a.closed
        yield upstream.when(lambda: harness.pool.sessions and not len(
            harness.pool.sessions[0].router))
        harness.clock.advance(0.1)
        self.assertEqual(upstream.closed, [])
        harness.clock.advance(0.1)
        yield upstream.when(lambda: upstream.closed)
        self.assertEqual(upstream.closed[0].close_code, 1000)
        self.assertTrue(upstream.closed[0].clean)

    @defer.inlineCallbacks
    def test_unconfigured_proxy_uses_client_credentials(self):
        """Without configured keys, the client's pair opens upstream and upstream judges it."""
        harness = yield Harness(self, configured=False).start()
        a = yield harness.login()
        self.assertEqual(harness.upstream.authenticated()[0].key, KEY)
        b = yield harness.connect()
        yield b.next()
        b.send({"action": "auth", "key": KEY, "secret": "other"})
        self.assertEqual((yield b.next())[0]["code"], 402)
        c = yield harness.connect()
        yield c.next()
        c.send({"action": "auth", "key": "PKNOBODY", "secret": "x"})
        self.assertEqual((yield c.next())[0]["code"], 402)
        self.assertEqual(len(harness.upstream.authenticated()), 1)
        a.send({"action": "subscribe", "trades": ["AAPL"]})
        self.assertEqual((yield a.next()), ack(trades=["AAPL"]))

    @defer.inlineCallbacks
    def test_requests_while_upstream_down_are_answered_and_replayed(self):
        """With upstream refusing handshakes, requests are acked locally and replayed later."""
        harness = yield Harness(self).start()
        upstream = harness.upstream
        a = yield harness.login()
        upstream.refuse_handshake = 503
        lost = harness.pool.sessions[0].next_disconnect()
        upstream.authenticated()[0].drop()
        yield lost
        yield turn()  # ClientService schedules its retry right after the loss
        a.send({"action": "subscribe", "trades": ["AAPL"]})
        self.assertEqual((yield a.next()), ack(trades=["AAPL"]))
        upstream.refuse_handshake = 0
        harness.clock.advance(1.0)
        yield upstream.when(lambda: any(
            c.subscriptions["trades"] == ["AAPL"] for c in upstream.authenticated()))
        upstream.inject([trade("AAPL")])
        self.assertEqual([m["S"] for m in (yield a.next())], ["AAPL"])


class SecretHygieneTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_secrets_never_logged(self):
        """A whole session (good and bad auth, data, upstream drop) logs no secret."""
        from twisted.logger import formatEvent, globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        harness = yield Harness(self).start()
        client = yield harness.login()
        intruder = yield harness.connect()
        yield intruder.next()
        intruder.send({"action": "auth", "key": KEY, "secret": "WRONG-s3cret-Zq81"})
        yield intruder.next()
        client.send({"action": "subscribe", "trades": ["AAPL"]})
        yield client.next()
        harness.upstream.inject([trade("AAPL")])
        yield client.next()
        lost = harness.pool.sessions[0].next_disconnect()
        harness.upstream.authenticated()[0].drop()
        yield lost
        self.assertGreater(len(events), 5)
        for event in events:
            text = formatEvent(event) + repr(sorted(event.items(), key=lambda kv: kv[0]))
            for secret in (SECRET, "WRONG-s3cret-Zq81"):
                self.assertNotIn(secret, text)


class AccountsTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def check_accounts_are_separate(self, harness):
        a = yield harness.login()
        b = yield harness.login(key="PKOTHER", secret="other-secret")
        for client in (a, b):
            client.send({"action": "subscribe", "trades": ["AAPL"]})
            self.assertEqual((yield client.next()), ack(trades=["AAPL"]))
        sessions = harness.upstream.authenticated()
        self.assertEqual(sorted(s.key for s in sessions), ["PKOTHER", KEY])
        harness.upstream.inject([trade("AAPL", i=1)], key="PKOTHER")
        harness.upstream.inject([trade("AAPL", i=2)], key=KEY)
        self.assertEqual([m["i"] for m in (yield b.next())], [1])
        self.assertEqual([m["i"] for m in (yield a.next())], [2])
        intruder = yield harness.connect()
        yield intruder.next()
        intruder.send({"action": "auth", "key": "PKOTHER", "secret": SECRET})
        self.assertEqual((yield intruder.next())[0]["code"], 402)

    def test_configured_accounts(self):
        """Two configured accounts: separate upstreams; no data crosses; a mixed pair is 402."""
        from alpaca_proxy.credentials import Credentials

        accounts = {KEY: SECRET, "PKOTHER": "other-secret"}
        return Harness(self, accounts=accounts, configured={
            k: Credentials(k, v) for k, v in accounts.items()}).start().addCallback(
            self.check_accounts_are_separate)

    def test_clients_bring_their_own_accounts(self):
        """Unconfigured: each valid pair gets its own upstream; upstream judges each pair."""
        accounts = {KEY: SECRET, "PKOTHER": "other-secret"}
        return Harness(self, accounts=accounts, configured=False).start().addCallback(
            self.check_accounts_are_separate)


class ChainTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_a_proxy_can_be_another_proxys_upstream(self):
        """B's upstream is A: clients on both get their data; one connection at the root."""
        root = yield Harness(self).start()
        leaf = yield Harness(self, upstream_url="ws://127.0.0.1:%d" % (root.port,)).start()
        on_root = yield root.login()
        on_leaf = yield leaf.login(msgpack_encoding=True)
        on_root.send({"action": "subscribe", "trades": ["MSFT"]})
        self.assertEqual((yield on_root.next()), ack(trades=["MSFT"]))
        on_leaf.send({"action": "subscribe", "trades": ["AAPL"], "bars": ["*"]})
        self.assertEqual((yield on_leaf.next()), ack(trades=["AAPL"], bars=["*"]))
        element = trade("AAPL")
        root.upstream.inject([element, trade("MSFT"), trade("IBM")])
        self.assertEqual([m["S"] for m in (yield on_root.next())], ["MSFT"])
        yield on_leaf.next()
        # Two hops, still the upstream's own bytes for MessagePack clients.
        self.assertEqual(on_leaf.raw[-1], b"\x91" + msgpack.packb(element, datetime=False))
        self.assertEqual(len(root.upstream.authenticated()), 1)
        self.assertEqual(root.upstream.handshakes, 1)
        [root_session] = root.upstream.authenticated()
        self.assertEqual(sorted(root_session.subscriptions["trades"]), ["AAPL", "MSFT"])
