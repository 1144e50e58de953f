"""Record from the tests' fake upstream, then replay it, over loopback sockets.

The recorder and the player do their disk work in threads of their own, as in
production; the replay runs on the reactor's clock.
"""

import json
import os
from urllib.request import urlopen

import msgpack
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from alpaca_proxy.codec import split_frame, to_msgpack
from alpaca_proxy.recording import fileformat
from alpaca_proxy.recording.catalog import Catalog
from alpaca_proxy.streams import STOCKS, Stream
from tests import sdk_env
from tests.integration.test_sdk import STAMP_TEXT, market_expected, market_frame
from tests.support import KEY, SECRET, T0, Harness, connect

IEX = Stream(STOCKS, "/v2/iex")


def trade(symbol, price):
    return {"T": "t", "S": symbol, "i": int(price * 100), "x": "V", "p": price, "s": 100,
            "c": ["@"], "z": "C", "t": T0}


def quote(symbol, price):
    return {"T": "q", "S": symbol, "bx": "V", "bp": price, "bs": 3, "ax": "V",
            "ap": price + 0.01, "as": 2, "c": ["R"], "z": "C", "t": T0}


def market(n):
    """One upstream frame: symbols the recording session wanted, and one it did not."""
    return [trade("AAPL", 100 + n), quote("AAPL", 99 + n), trade("MSFT", 200 + n),
            trade("TSLA", 300 + n)]


@defer.inlineCallbacks
def collect(client, count):
    """The next frames' elements (as their bytes) until ``count`` data messages came."""
    elements = []
    while len(elements) < count:
        yield client.next()
        elements += split_frame(client.raw[-1])
    return elements


class RecordThenReplayTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def record(self, frames=20):
        """Record ``frames`` upstream frames through a proxy; the recording's folder."""
        folder = self.mktemp()
        os.makedirs(folder)
        harness = yield Harness(self, settings={"record": folder}).start()
        client = yield harness.login(msgpack_encoding=True)
        client.send({"action": "subscribe", "trades": ["AAPL", "MSFT"], "quotes": ["AAPL"]})
        yield client.next()
        for n in range(frames):
            harness.upstream.inject(market(n))
            yield client.next()
        yield harness.stop()  # the recorder writes what it holds before it stops
        return folder

    @defer.inlineCallbacks
    def test_recorded_byte_for_byte(self):
        """Every upstream frame is in the file as upstream sent it, control ones too."""
        folder = yield self.record(5)
        catalog = Catalog.open(folder)
        self.assertEqual(catalog.endpoints, {"/v2/iex"})
        frames = yield deferToThread(lambda: [f for _, f in catalog.timeline()])
        payloads = [f.payload for f in frames]
        # Welcome, authenticated, the ack, the data, then the ack of the unsubscribe
        # that followed the client's leaving.
        self.assertEqual(payloads[3:8], [msgpack.packb(market(n), datetime=False)
                                         for n in range(5)])
        self.assertEqual([msgpack.unpackb(p)[0]["T"] for p in payloads[:3] + payloads[8:]],
                         ["success", "success", "subscription", "subscription"])
        first = msgpack.unpackb(payloads[0], timestamp=0)
        self.assertEqual(first, [{"T": "success", "msg": "connected"}])
        self.assertEqual(frames, sorted(frames, key=lambda f: f.received))
        self.assertTrue(all(f.binary for f in frames))

    @defer.inlineCallbacks
    def test_replay_as_fast_as_read_is_the_recording(self):
        """At speed 0 a client gets exactly the recorded messages of its symbols, in
        order, each MessagePack element the recorded bytes; a JSON client the same."""
        folder = yield self.record(20)
        recorded = [e for n in range(20) for e in split_frame(to_msgpack(market(n)))]
        for encoding in ("msgpack", "json"):
            replay = yield Harness(self, real_time=True, settings={
                "replay": Catalog.open(folder), "replay_speed": 0}).start()
            client = yield replay.login(msgpack_encoding=encoding == "msgpack")
            client.send({"action": "subscribe", "trades": ["AAPL", "TSLA"]})
            ack = yield client.next()
            self.assertEqual(ack[0]["trades"], ["AAPL", "TSLA"])
            wanted = [e for e in recorded if e.message["T"] == "t"
                      and e.message["S"] in ("AAPL", "TSLA")]
            if encoding == "msgpack":
                got = yield collect(client, len(wanted))
                self.assertEqual([e.raw for e in got], [e.raw for e in wanted])
            else:
                got = []
                while len(got) < len(wanted):
                    got += (yield client.next())
                self.assertEqual(got, [json.loads(e.json) for e in wanted])
            yield replay.stop()

    @defer.inlineCallbacks
    def test_replay_serves_only_what_it_holds_and_says_where_it_is(self):
        """Paths the recording lacks get 404 at the handshake; the page says REPLAY."""
        folder = yield self.record(3)
        replay = yield Harness(self, real_time=True, settings={
            "replay": Catalog.open(folder), "replay_speed": 0}).start()
        refused = yield self.assertFailure(
            connect(replay.port, "/v1beta3/crypto/us", clock=reactor), ConnectionError)
        self.assertIn("404", str(refused))
        client = yield replay.login()
        client.send({"action": "subscribe", "trades": ["MSFT"]})
        yield client.next()
        got = []
        while len(got) < 3:
            got += (yield client.next())
        self.assertEqual([m["p"] for m in got], [200, 201, 202])
        status = yield deferToThread(
            lambda: json.load(urlopen("http://127.0.0.1:%d/status.json" % replay.port)))
        self.assertEqual(status["replay"]["endpoints"], ["/v2/iex"])
        self.assertEqual(status["replay"]["speed"], 0)
        self.assertTrue(status["replay"]["position"].endswith("Z"), status["replay"])
        self.assertIn(status["replay"]["state"], ("playing", "ended"))
        metrics = yield deferToThread(
            lambda: urlopen("http://127.0.0.1:%d/metrics" % replay.port).read().decode())
        self.assertIn("alpaca_proxy_replay_frames_total", metrics)

    @defer.inlineCallbacks
    def test_torn_tail_replays_what_came_before(self):
        """A recording cut in the middle of a block (a crash) replays its intact part."""
        folder = yield self.record(4)
        [path] = [os.path.join(folder, name) for name in os.listdir(folder)]
        with open(path, "ab") as out:
            torn = fileformat.encode_block(fileformat.pack_frame(
                1, True, to_msgpack(market(99))), fileformat.new_compressor())
            out.write(torn[:len(torn) - 7])
        replay = yield Harness(self, real_time=True, settings={
            "replay": Catalog.open(folder), "replay_speed": 0}).start()
        client = yield replay.login(msgpack_encoding=True)
        client.send({"action": "subscribe", "quotes": ["AAPL"]})
        yield client.next()
        got = yield collect(client, 4)
        self.assertEqual([e.message["bp"] for e in got], [99, 100, 101, 102])


class SdkReplayTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_alpaca_py_through_a_replay(self):
        """An unmodified alpaca-py stream reads a replay as it would read Alpaca."""
        python = sdk_env.python()
        folder = self.mktemp()
        os.makedirs(folder)
        with open(os.path.join(folder, "alpaca_v2_iex.2024-05-02.zst"), "wb") as out:
            body = fileformat.pack_metadata(fileformat.metadata("stocks", "/v2/iex", 0, "test"))
            for n in range(3):
                body += fileformat.pack_frame(1714658587 * 10**9 + n, True,
                                              msgpack.packb(market_frame(["AAPL", "OTHER"]),
                                                            datetime=False))
            out.write(fileformat.encode_block(body, fileformat.new_compressor()))
        replay = yield Harness(self, real_time=True, settings={
            "replay": Catalog.open(folder), "replay_speed": 0}).start()
        out, err, code = yield getProcessOutputAndValue(
            python, [sdk_env.script("alpaca_py_client.py"), "stocks",
                     "ws://127.0.0.1:%d/v2/iex" % replay.port, KEY, SECRET, "AAPL", "3"],
            env={}, reactor=reactor)
        self.assertEqual(code, 0, (out + err).decode()[-3000:])
        lines = [json.loads(line) for line in out.decode().splitlines()]
        self.assertEqual([(m["kind"], m["symbol"], m["value"]) for m in lines],
                         market_expected("AAPL"))
        self.assertTrue(lines[0]["time"].startswith(STAMP_TEXT), lines[0])


class OtherStreamsTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_polygon_recorded_and_replayed(self):
        """A Polygon cluster's frames are recorded and replayed to a Polygon client."""
        from tests.integration.test_polygon import acks, quote
        from tests.integration.test_polygon import trade as polygon_trade

        folder = self.mktemp()
        os.makedirs(folder)
        harness = yield Harness(self, settings={"record": folder}).start()
        client = yield harness.polygon_login("stocks")
        client.send({"action": "subscribe", "params": "T.MSFT,Q.MSFT"})
        yield client.next()
        events = [polygon_trade("MSFT", 1.5), quote("MSFT", 1.4), polygon_trade("MSFT", 1.6)]
        harness.polygon.inject(events)
        yield client.next()
        yield harness.stop()
        self.assertEqual(Catalog.open(folder).endpoints, {"/stocks"})
        replay = yield Harness(self, real_time=True, settings={
            "replay": Catalog.open(folder), "replay_speed": 0}).start()
        client = yield replay.polygon_login("stocks")
        client.send({"action": "subscribe", "params": "T.MSFT"})
        self.assertEqual((yield client.next()), acks("subscribe", "T.MSFT"))
        self.assertEqual((yield client.next()), [events[0], events[2]])
        self.assertFalse(any(client.binary_flags))

    @defer.inlineCallbacks
    def test_trading_only_with_record_trading_and_replayed(self):
        """The trading stream is recorded only when asked; its events replay to listeners."""
        from tests.integration.test_trading import AUTHORIZED, FILL

        folders = []
        for record_trading in (False, True):
            folder = self.mktemp()
            os.makedirs(folder)
            folders.append(folder)
            harness = yield Harness(self, settings={
                "record": folder, "record_trading": record_trading}).start()
            client = yield harness.connect(path="/stream")
            client.send({"action": "auth", "key": KEY, "secret": SECRET})
            self.assertEqual((yield client.next()), AUTHORIZED)
            client.send({"action": "listen", "data": {"streams": ["trade_updates"]}})
            yield client.next()
            yield harness.upstream.when(
                lambda: any(c.listening for c in harness.upstream.connections))
            harness.upstream.trade_update(FILL)
            yield client.next()
            yield harness.stop()
        self.assertEqual(os.listdir(folders[0]), [])
        self.assertEqual(Catalog.open(folders[1]).endpoints, {"/stream"})
        replay = yield Harness(self, real_time=True, settings={
            "replay": Catalog.open(folders[1]), "replay_speed": 0}).start()
        client = yield replay.connect(path="/stream")
        client.send({"action": "auth", "key": KEY, "secret": SECRET})
        self.assertEqual((yield client.next()), AUTHORIZED)
        client.send({"action": "listen", "data": {"streams": ["trade_updates"]}})
        yield client.next()
        self.assertEqual((yield client.next()), {"stream": "trade_updates", "data": FILL})
