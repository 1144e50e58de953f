"""The recording file format, the catalog, timestamp shifting and the inspection tools."""

import io
import json
import os
import subprocess
import sys
from datetime import date

import msgpack
import zstandard
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy.codec import to_msgpack
from alpaca_proxy.dialects import alpaca_data, alpaca_trading, polygon
from alpaca_proxy.recording import fileformat
from alpaca_proxy.recording.catalog import Catalog, NotARecording
from alpaca_proxy.recording.inspection import export, info

T = msgpack.Timestamp(1764685800, 120450000)  # 2025-12-02T14:30:00.12045Z
SECOND = 1_000_000_000


def block(*records):
    body = b"".join(fileformat.pack_metadata(r) if isinstance(r, dict) else
                    fileformat.pack_frame(*r) for r in records)
    return fileformat.encode_block(body, fileformat.new_compressor())


def meta(endpoint="/v2/iex", kind="stocks"):
    return fileformat.metadata(kind, endpoint, 0, "test")


def trade(symbol, price, t=T):
    return {"T": "t", "S": symbol, "i": 1, "x": "V", "p": price, "s": 100, "c": ["@"],
            "z": "C", "t": t}


def frame(*messages):
    return to_msgpack(list(messages))


class FormatTests(SynchronousTestCase):
    def read(self, data):
        reader = fileformat.Reader(io.BytesIO(data))
        records = [r for body in reader.blocks() for r in fileformat.records(body)]
        return records, reader

    def test_round_trip_keeps_bytes_and_times(self):
        """Frames come back byte for byte, with their receive times and frame types."""
        payload = frame(trade("AAPL", 1.5))
        data = block(meta(), (5, True, payload), (6, False, b'[{"T":"x"}]'))
        records, reader = self.read(data)
        self.assertEqual(records, [meta(), fileformat.Frame(5, True, payload),
                                   fileformat.Frame(6, False, b'[{"T":"x"}]')])
        self.assertEqual((reader.damaged, reader.skipped), (0, 0))

    def test_zstdcat_reads_it(self):
        """The file is plain zstd: skippable frames hide the block headers from zstd tools."""
        data = block(meta(), (5, True, b"one")) + block((6, True, b"two"))
        plain = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(data), read_across_frames=True).read()
        self.assertEqual(list(msgpack.Unpacker(io.BytesIO(plain), raw=False)),
                         [meta(), [5, True, b"one"], [6, True, b"two"]])

    def test_torn_tail_is_skipped(self):
        """A crash in the middle of a write: the intact blocks are read, the rest skipped."""
        whole = block(meta(), (1, True, b"a")) + block((2, True, b"b"))
        torn = block((3, True, b"c" * 1000))
        records, reader = self.read(whole + torn[:len(torn) // 2])
        self.assertEqual([r.payload for r in records if isinstance(r, fileformat.Frame)],
                         [b"a", b"b"])
        self.assertEqual(reader.damaged, 1)
        self.assertEqual(reader.skipped, len(torn) // 2)

    def test_blocks_after_a_torn_one_are_found(self):
        """A proxy restarted after a crash appends after the torn block: both sides count."""
        torn = block((3, True, b"c" * 1000))
        data = block(meta(), (1, True, b"a")) + torn[:40] + block(meta(), (4, True, b"d"))
        records, reader = self.read(data)
        self.assertEqual([r.payload for r in records if isinstance(r, fileformat.Frame)],
                         [b"a", b"d"])
        self.assertEqual((reader.damaged, reader.skipped), (1, 40))

    def test_corrupted_block_is_skipped(self):
        """A flipped byte fails the block's CRC: that block alone is lost."""
        first, second, third = (block((n, True, bytes([65 + n]) * 50)) for n in range(3))
        damaged = bytearray(second)
        damaged[-3] ^= 0xFF
        records, reader = self.read(first + bytes(damaged) + third)
        self.assertEqual([r.received for r in records], [0, 2])
        self.assertEqual(reader.damaged, 1)

    def test_file_names(self):
        self.assertEqual(fileformat.file_name("stocks", "/v2/iex", date(2026, 12, 2)),
                         "alpaca_v2_iex.2026-12-02.zst")
        self.assertEqual(fileformat.file_name("polygon", "/futures/cme", date(2026, 1, 9)),
                         "polygon_futures_cme.2026-01-09.zst")
        self.assertEqual(fileformat.file_name("trading", "/stream", date(2026, 1, 9)),
                         "trading_stream.2026-01-09.zst")


class CatalogTests(SynchronousTestCase):
    def write(self, folder, name, *blocks):
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name)
        with open(path, "wb") as out:
            out.write(b"".join(blocks))
        return path

    def test_endpoints_days_and_one_timeline(self):
        """Files group by endpoint, days in order; the timeline merges them by time."""
        folder = self.mktemp()
        iex = frame(trade("AAPL", 1.0))
        crypto = frame(trade("BTC/USD", 2.0))
        self.write(folder, "alpaca_v2_iex.2026-12-02.zst",
                   block(meta(), (10, True, iex), (30, True, iex)))
        self.write(folder, "alpaca_v2_iex.2026-12-01.zst", block(meta(), (5, True, iex)))
        self.write(folder, "alpaca_v1beta3_crypto_us.2026-12-02.zst",
                   block(meta("/v1beta3/crypto/us", "crypto"), (20, True, crypto)))
        self.write(folder, "notes.txt", b"not a recording")
        self.write(folder, "other.zst", zstandard.ZstdCompressor().compress(b"not ours"))
        catalog = Catalog.open(folder)
        self.assertEqual(catalog.endpoints, {"/v2/iex", "/v1beta3/crypto/us"})
        self.assertEqual(catalog.stream("/v1beta3/crypto/us").kind, "crypto")
        self.assertEqual([(endpoint, f.received) for endpoint, f in catalog.timeline()],
                         [("/v2/iex", 5), ("/v2/iex", 10), ("/v1beta3/crypto/us", 20),
                          ("/v2/iex", 30)])
        self.assertEqual([f.received for _, f in catalog.timeline(10, 30)], [10, 20])

    def test_not_a_recording(self):
        folder = self.mktemp()
        os.makedirs(folder)
        self.assertRaises(NotARecording, Catalog.open, folder)
        self.assertRaises(NotARecording, Catalog.open, folder + "/missing")


class ShiftTests(SynchronousTestCase):
    def test_alpaca_times_move_and_key_order_stays(self):
        story = {"T": "n", "id": 1, "created_at": T, "updated_at": T, "headline": "h"}
        moved = alpaca_data.shifted(story, 2 * SECOND + 5)
        self.assertEqual(list(moved), list(story))
        self.assertEqual(moved["created_at"].to_unix_nano(), T.to_unix_nano() + 2 * SECOND + 5)
        self.assertEqual(moved["headline"], "h")
        self.assertEqual(alpaca_data.shifted(trade("A", 1.0), 0), trade("A", 1.0))

    def test_polygon_times_move_but_sizes_do_not(self):
        trade_event = {"ev": "T", "sym": "MSFT", "p": 1.0, "s": 100, "t": 1000}
        self.assertEqual(polygon.shifted(trade_event, 3 * SECOND)["t"], 4000)
        self.assertEqual(polygon.shifted(trade_event, 3 * SECOND)["s"], 100)
        aggregate = {"ev": "AM", "sym": "MSFT", "v": 5, "s": 60000, "e": 120000}
        moved = polygon.shifted(aggregate, SECOND)
        self.assertEqual((moved["s"], moved["e"], moved["v"]), (61000, 121000, 5))

    def test_trading_times_move(self):
        event = {"stream": "trade_updates", "data": {
            "event": "fill", "timestamp": "2024-05-02T14:03:07.551Z",
            "order": {"symbol": "MSFT", "filled_at": "2024-05-02T14:03:07.551234567Z",
                      "canceled_at": None, "qty": "1"}}}
        moved = alpaca_trading.shifted(event, 60 * SECOND)
        self.assertEqual(moved["data"]["timestamp"], "2024-05-02T14:04:07.551000Z")
        self.assertEqual(moved["data"]["order"]["filled_at"], "2024-05-02T14:04:07.551234Z")
        self.assertIsNone(moved["data"]["order"]["canceled_at"])
        self.assertEqual(moved["data"]["order"]["qty"], "1")


class InspectionTests(SynchronousTestCase):
    def setUp(self):
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        welcome = frame({"T": "success", "msg": "connected"})
        data = frame(trade("AAPL", 1.0), trade("MSFT", 2.0),
                     {"T": "q", "S": "AAPL", "bp": 1, "ap": 2, "t": T})
        torn = block((9 * SECOND, True, data))
        with open(os.path.join(self.folder, "alpaca_v2_iex.2025-12-02.zst"), "wb") as out:
            out.write(block(meta(), (1 * SECOND, True, welcome), (2 * SECOND, True, data))
                      + block((3 * SECOND, True, data)) + torn[:30])

    def test_info(self):
        summary = info(Catalog.open(self.folder))
        [endpoint] = summary["endpoints"]
        self.assertEqual(endpoint["frames"], 3)
        self.assertEqual(endpoint["first"], "1970-01-01T00:00:01Z")
        self.assertEqual(endpoint["last"], "1970-01-01T00:00:03Z")
        self.assertEqual(endpoint["messages"], {"trades": 4, "quotes": 2})
        self.assertEqual(endpoint["symbols"], {"trades": {"AAPL": 2, "MSFT": 2},
                                               "quotes": {"AAPL": 2}})
        self.assertEqual((endpoint["damaged_blocks"], endpoint["skipped_bytes"]), (1, 30))

    def test_export_lines(self):
        out = io.BytesIO()
        self.assertEqual(export(Catalog.open(self.folder), out), 6)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual(lines[0], {"received": "1970-01-01T00:00:02Z", "endpoint": "/v2/iex",
                                    "message": {"T": "t", "S": "AAPL", "i": 1, "x": "V",
                                                "p": 1.0, "s": 100, "c": ["@"], "z": "C",
                                                "t": "2025-12-02T14:30:00.12045Z"}})
        self.assertEqual([line["message"]["S"] for line in lines],
                         ["AAPL", "MSFT", "AAPL"] * 2)

    def test_command_line(self):
        """``python -m alpaca_proxy.recording`` with options after the path."""
        run = subprocess.run(
            [sys.executable, "-m", "alpaca_proxy.recording", "export", self.folder,
             "--format", "jsonl", "--from", "1970-01-01T00:00:03Z"],
            capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(len(run.stdout.splitlines()), 3)
        run = subprocess.run([sys.executable, "-m", "alpaca_proxy.recording", "info",
                              self.folder], capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("/v2/iex (stocks): 1 file(s), 1970-01-01T00:00:01Z .."
                      " 1970-01-01T00:00:03Z, 3 frames", run.stdout)
        self.assertIn("AAPL 2, MSFT 2", run.stdout)
        self.assertIn("damaged: 1 place(s), 30 bytes skipped", run.stdout)
        run = subprocess.run([sys.executable, "-m", "alpaca_proxy.recording", "info",
                              self.folder + "/nothing"], capture_output=True, text=True)
        self.assertEqual(run.returncode, 2)
        self.assertIn("no such file or directory", run.stderr)
