"""Record and replay on one Clock: the recorder's files and days, and the player's pace,
window, loop, shift and end, with real Autobahn clients over ``iosim`` subscribing
through the proxy's own protocol to a session whose link is a ``ReplayLink``."""

import os
from datetime import datetime, timezone

import msgpack
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy.codec import split_frame, to_msgpack
from alpaca_proxy.dialects.alpaca_data import DIALECTS
from alpaca_proxy.proxy import Limits, Proxy
from alpaca_proxy.downstream.alpaca_data import AlpacaDataProtocol
from alpaca_proxy.downstream.client import ClientFactory
from alpaca_proxy.recording import fileformat
from alpaca_proxy.recording import recorder as recorder_module
from alpaca_proxy.recording.catalog import Catalog
from alpaca_proxy.recording.player import Player
from alpaca_proxy.recording.recorder import Recorder
from alpaca_proxy.recording.worker import InlineWorker
from alpaca_proxy.streams import STOCKS, TRADING, Stream
from alpaca_proxy.upstream.replay import ReplayLink
from alpaca_proxy.upstream.session import DataSession
from tests.protocol.wire import PAIR, IosimProxy, OneSessionPool

IEX = Stream(STOCKS, "/v2/iex")
#: 2026-12-01T14:30:00Z, as the recorder's clock reads it.
OPEN = datetime(2026, 12, 1, 14, 30, tzinfo=timezone.utc).timestamp()
SECOND = 1_000_000_000


def trade(symbol, price, seconds=OPEN):
    return {"T": "t", "S": symbol, "i": 1, "x": "V", "p": price, "s": 100, "c": ["@"],
            "z": "C", "t": msgpack.Timestamp.from_unix_nano(int(seconds * SECOND))}


def record(testcase, frames, stream=IEX):
    """A recording made by the Recorder on a Clock: ``frames`` is [(seconds, messages)]."""
    from twisted.internet.task import Clock

    folder = testcase.mktemp()
    os.makedirs(folder)
    clock = Clock()
    clock.advance(frames[0][0])
    recorder = Recorder(folder, clock, InlineWorker())
    recorder.startService()
    recorder.frame(stream, to_msgpack([{"T": "success", "msg": "connected"}]), True)
    for seconds, messages in frames:
        clock.advance(seconds - clock.seconds())
        recorder.frame(stream, to_msgpack(messages), True)
    recorder.stopService()
    return folder


class RecorderTests(SynchronousTestCase):
    def setUp(self):
        from twisted.internet.task import Clock

        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.clock = Clock()
        self.clock.advance(OPEN)
        self.recorder = Recorder(self.folder, self.clock, InlineWorker())
        self.recorder.startService()
        self.addCleanup(self.recorder.stopService)

    def frames(self, name):
        path = os.path.join(self.folder, name)
        return [r for r in fileformat.read_file(path) if isinstance(r, fileformat.Frame)]

    def test_a_block_a_second(self):
        """Frames reach the disk within a second, byte for byte, with their receive time."""
        payload = to_msgpack([trade("AAPL", 1.0)])
        self.recorder.frame(IEX, payload, True)
        name = "alpaca_v2_iex.2026-12-01.zst"
        self.assertFalse(os.path.exists(os.path.join(self.folder, name)))
        self.clock.advance(1)
        self.assertEqual(self.frames(name), [fileformat.Frame(int(OPEN) * SECOND, True, payload)])
        self.assertEqual(fileformat.first_metadata(os.path.join(self.folder, name))["endpoint"],
                         "/v2/iex")

    def test_rotation_across_midnight(self):
        """Each UTC day has its own file, each opening with its metadata."""
        midnight = datetime(2026, 12, 2, tzinfo=timezone.utc).timestamp()
        self.clock.advance(midnight - 0.5 - self.clock.seconds())
        self.recorder.frame(IEX, b"before", True)
        self.clock.advance(0.75)
        self.recorder.frame(IEX, b"after", True)
        self.clock.advance(1)
        self.assertEqual([f.payload for f in self.frames("alpaca_v2_iex.2026-12-01.zst")],
                         [b"before"])
        self.assertEqual([f.payload for f in self.frames("alpaca_v2_iex.2026-12-02.zst")],
                         [b"after"])
        for day in ("01", "02"):
            path = os.path.join(self.folder, "alpaca_v2_iex.2026-12-%s.zst" % day)
            self.assertEqual(fileformat.first_metadata(path)["provider"], "alpaca")

    def test_old_days_are_deleted_when_asked(self):
        """--record-keep-days 2: at start-up and at midnight, days older than the last two
        go; files the recorder did not name stay."""
        names = ["alpaca_v2_iex.2026-11-%d.zst" % day for day in (28, 29, 30)] + [
            "polygon_stocks.2026-11-29.zst", "notes-2026-11-01.zst", "mine.txt"]
        for name in names:
            open(os.path.join(self.folder, name), "wb").close()
        recorder = Recorder(self.folder, self.clock, InlineWorker(), keep_days=2)
        recorder.startService()
        self.addCleanup(recorder.stopService)
        self.assertEqual(sorted(os.listdir(self.folder)), [
            "alpaca_v2_iex.2026-11-30.zst", "mine.txt", "notes-2026-11-01.zst"])
        recorder.frame(IEX, b"today", True)
        midnight = datetime(2026, 12, 2, tzinfo=timezone.utc).timestamp()
        self.clock.advance(midnight + 1 - self.clock.seconds())
        recorder.frame(IEX, b"tomorrow", True)
        self.clock.advance(1)
        self.assertEqual(sorted(os.listdir(self.folder)), [
            "alpaca_v2_iex.2026-12-01.zst", "alpaca_v2_iex.2026-12-02.zst", "mine.txt",
            "notes-2026-11-01.zst"])

    def test_trading_only_when_asked(self):
        trading = Stream(TRADING, "/stream")
        self.assertFalse(self.recorder.wants(trading))
        self.assertTrue(self.recorder.wants(IEX))
        self.assertTrue(Recorder(self.folder, self.clock, InlineWorker(),
                                 record_trading=True).wants(trading))

    def test_a_disk_that_falls_behind_costs_frames_not_memory(self):
        """Past MAX_BACKLOG bytes waiting for the disk, frames are dropped and counted."""
        self.patch(recorder_module, "MAX_BACKLOG", 10_000)

        class Stuck:
            def start(self):
                pass

            def stop(self):
                pass

            def run(self, *args):
                return Deferred()

        recorder = Recorder(self.folder, self.clock, Stuck())
        for _ in range(30):
            recorder.frame(IEX, b"x" * 1000, True)
            recorder.flush()
        self.assertGreater(recorder.dropped, 15)
        self.assertLessEqual(recorder.frames * 1000, 12_000)

    def test_a_failed_write_is_counted(self):
        recorder = Recorder(os.path.join(self.folder, "gone"), self.clock, InlineWorker())
        recorder.frame(IEX, b"x", True)
        recorder.flush()
        self.assertEqual(recorder.failed_writes, 1)
        self.flushLoggedErrors()


class ReplayProtocolTests(IosimProxy, SynchronousTestCase):
    """The proxy's data protocol over iosim, its session's link a ReplayLink."""

    def replay(self, folder, **options):
        self.clock.advance(OPEN + 86400 - self.clock.seconds())  # a day later
        self.player = Player(Catalog.open(folder), self.clock, InlineWorker(), **options)
        self.player.startService()
        self.addCleanup(self.player.stopService)
        self.session = DataSession(IEX, PAIR, self.clock, DIALECTS[STOCKS])
        self.session.link = self.link = ReplayLink(self.session, IEX, self.player, self.clock)
        self.link.startService()
        self.clock.advance(0)
        self.proxy = Proxy(self.clock, OneSessionPool(self.session),
                           limits=Limits(ping_interval=0, buffer_bytes=65536))
        self.factory = ClientFactory(self.proxy, AlpacaDataProtocol)

    def setUp(self):
        self.build()

    def subscribe(self, client, **channels):
        client.send(dict(action="subscribe", **channels))
        self.flush()
        self.clock.advance(0)  # the replay link answers on the next turn
        self.flush()
        ack, *data = client.take()
        self.assertEqual(ack[0]["T"], "subscription")
        client.frames = data  # what played at once, after the ack

    def prices(self, client):
        self.flush()
        return [m["p"] for frame in client.take() for m in frame if m["T"] == "t"]

    def test_speed_one_keeps_the_recorded_pacing(self):
        """Frames come at their recorded offsets from the first subscription, not sooner."""
        folder = record(self, [(OPEN, [trade("AAPL", 1.0)]), (OPEN + 0.5, [trade("AAPL", 2.0)]),
                               (OPEN + 2.0, [trade("AAPL", 3.0), trade("MSFT", 9.0)])])
        self.replay(folder)
        client = self.login()
        self.clock.advance(30)  # nothing plays before anyone subscribes
        self.assertEqual(self.player.state, "waiting")
        self.subscribe(client, trades=["AAPL"])
        self.clock.advance(0)
        self.assertEqual(self.prices(client), [1.0])
        self.clock.advance(0.49)
        self.assertEqual(self.prices(client), [])
        self.clock.advance(0.01)
        self.assertEqual(self.prices(client), [2.0])
        self.clock.advance(1.49)
        self.assertEqual(self.prices(client), [])
        self.clock.advance(0.01)
        self.assertEqual(self.prices(client), [3.0])  # MSFT is not its symbol
        self.assertEqual(self.player.state, "ended")
        self.assertEqual(self.player.snapshot()["position"], "2026-12-01T14:30:02Z")
        self.clock.advance(60)
        self.assertEqual(self.prices(client), [])
        self.assertIsNone(client.close_code)  # at the end, clients stay connected

    def test_speed_ten(self):
        folder = record(self, [(OPEN + n, [trade("AAPL", float(n))]) for n in range(3)])
        self.replay(folder, speed=10)
        client = self.login()
        self.subscribe(client, trades=["AAPL"])
        self.clock.advance(0)
        self.assertEqual(self.prices(client), [0.0])
        self.clock.advance(0.1)
        self.assertEqual(self.prices(client), [1.0])
        self.clock.advance(0.1)
        self.assertEqual(self.prices(client), [2.0])

    def test_window_and_loop(self):
        """--replay-from/--replay-to select frames by receive time; --replay-loop repeats."""
        folder = record(self, [(OPEN + n, [trade("AAPL", float(n))]) for n in range(5)])
        self.replay(folder, start_ns=int(OPEN + 1) * SECOND, end_ns=int(OPEN + 3) * SECOND,
                    loop=True)
        client = self.login()
        self.subscribe(client, trades=["AAPL"])
        for _ in range(5):
            self.clock.advance(0.5)
        self.assertEqual(self.prices(client), [1.0, 2.0, 1.0, 2.0, 1.0])
        self.assertGreaterEqual(self.player.loops, 2)

    def test_shift_moves_timestamps_to_now(self):
        folder = record(self, [(OPEN, [trade("AAPL", 1.0, seconds=OPEN - 0.25)])])
        self.replay(folder, shift=True)
        client = self.login(msgpack_encoding=True)
        self.subscribe(client, trades=["AAPL"])
        self.clock.advance(0)
        self.flush()
        [[message]] = client.take()
        stamp = message["t"]  # a datetime (the client decodes with timestamp=3)
        self.assertAlmostEqual(stamp.timestamp(), self.clock.seconds() - 0.25, places=3)

    def test_as_fast_as_the_slowest_reader(self):
        """At speed 0 the player waits for a client whose connection stopped taking
        writes; nothing is lost, nobody is cut off, and it waits for a subscriber."""
        frames = [(OPEN + n / 1000, [trade("AAPL", float(n)), trade("MSFT", float(n))])
                  for n in range(300)]
        self.replay(record(self, frames), speed=0)
        slow, fast = self.login(), self.login()
        self.clock.advance(10)
        self.assertEqual(self.player.frames_played, 0)  # nobody subscribed yet
        slow.server._backpressure.pauseProducing()  # as TCP would, its buffer full
        self.subscribe(slow, trades=["MSFT"])
        self.subscribe(fast, trades=["AAPL"])
        for _ in range(20):
            self.clock.advance(0.1)
        self.assertEqual(self.player.frames_played, 0)  # waiting for the slow one
        self.assertEqual(self.player.state, "playing")
        slow.server._backpressure.resumeProducing()
        self.clock.advance(0)
        self.assertEqual(self.prices(fast), [float(n) for n in range(300)])
        self.assertEqual(self.prices(slow), [float(n) for n in range(300)])
        self.assertIsNone(slow.close_code)
        self.assertEqual(self.player.state, "ended")

    def test_as_fast_as_read_waits_for_a_subscriber(self):
        """At speed 0 with nobody subscribed any more, playback waits where it is."""
        frames = [(OPEN + n / 1000, [trade("AAPL", float(n))]) for n in range(10)]
        self.replay(record(self, frames), speed=0)
        client = self.login()
        client.server._backpressure.pauseProducing()
        self.subscribe(client, trades=["AAPL"])
        client.send({"action": "unsubscribe", "trades": ["AAPL"]})
        self.flush()
        self.clock.advance(0)
        client.server._backpressure.resumeProducing()
        self.clock.advance(0)
        self.assertEqual(self.player.state, "waiting")
        self.assertEqual(self.player.frames_played, 0)
        self.subscribe(client, trades=["AAPL"])
        self.clock.advance(0)
        self.assertEqual(self.prices(client), [float(n) for n in range(10)])

    def test_msgpack_elements_are_the_recorded_bytes(self):
        messages = [trade("AAPL", 1.25), trade("MSFT", 2.5), trade("AAPL", 3.75)]
        folder = record(self, [(OPEN, messages)])
        self.replay(folder, speed=0)
        client = self.login(msgpack_encoding=True)
        received = []
        client.onMessage = lambda payload, binary: received.append(payload)
        client.send({"action": "subscribe", "trades": ["AAPL"]})
        self.flush()
        for _ in range(5):
            self.clock.advance(0)
        self.flush()
        recorded = [e.raw for e in split_frame(to_msgpack(messages)) if e.message["S"] == "AAPL"]
        data = [e.raw for payload in received[1:] for e in split_frame(payload)]
        self.assertEqual(data, recorded)



class ReplayBooksTests(SynchronousTestCase):
    def test_a_book_subscribed_mid_replay_comes_whole_first(self):
        """As from Alpaca: the ack, then the whole book as the recording has built it."""
        from alpaca_proxy import codec
        from alpaca_proxy.streams import CRYPTO
        from alpaca_proxy.subscriptions import Change
        from tests.protocol.test_clustered import FakeClient

        crypto = Stream(CRYPTO, "/v1beta3/crypto/us")
        whole = {"T": "o", "S": "BTC/USD", "t": msgpack.Timestamp(1, 0), "r": True,
                 "b": [{"p": 100.0, "s": 1.0}], "a": [{"p": 101.0, "s": 2.0}]}
        update = {"T": "o", "S": "BTC/USD", "t": msgpack.Timestamp(2, 0),
                  "b": [{"p": 100.0, "s": 0}, {"p": 99.5, "s": 4.0}], "a": []}
        folder = record(self, [(OPEN, [whole]), (OPEN + 0.1, [update]),
                               (OPEN + 5, [trade("BTC/USD", 1.0)])], stream=crypto)
        from twisted.internet.task import Clock

        clock = Clock()
        clock.advance(OPEN + 86400)
        player = Player(Catalog.open(folder), clock, InlineWorker(), speed=1)
        player.startService()
        self.addCleanup(player.stopService)
        session = DataSession(crypto, PAIR, clock, DIALECTS[CRYPTO])
        session.link = link = ReplayLink(session, crypto, player, clock)
        link.startService()
        clock.advance(0)
        trades = FakeClient()
        session.attach(trades)
        session.request(trades, Change("subscribe", {"trades": ("BTC/USD",)}))
        for _ in range(5):
            clock.advance(0.5)  # the book and its update play, nobody subscribed to it
        books = FakeClient()
        session.attach(books)
        session.request(books, Change("subscribe", {"orderbooks": ("BTC/USD",)}))
        clock.advance(0)
        clock.advance(0)
        self.assertEqual(len(books.acks), 1)
        [book] = [m for frame in books.frames for m in codec.decode(frame)]
        self.assertEqual((book["r"], book["b"], book["a"]),
                         (True, [{"p": 99.5, "s": 4.0}], [{"p": 101.0, "s": 2.0}]))
