"""Replay benchmark: how fast a recording plays at speed 0, and what recording costs.

Run by hand (not in CI), from the repository root with the proxy installed:

    python bench/replay.py --frames 50000 --batch 10 --clients 10
    python bench/replay.py --frames 50000 --clients 10 --slow 1    # one client reads slowly

It writes a recording (``--frames`` MessagePack frames of ``--batch`` trades and
quotes over one symbol group per client), starts ``alpaca-proxy --replay DIR
--replay-speed 0``, connects ``--clients`` MessagePack clients (each subscribed to
its group), and reports: messages delivered per second, the proxy's CPU per
recorded message, its peak RSS, whether every client got every one of its
messages in order, and the recording's size on disk.  ``--slow N`` makes N clients
stop reading for five seconds now and then: at speed 0 nothing may be lost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fanout import cpu_seconds, free_port, memory_kib  # noqa: E402


def write_recording(folder: str, frames: int, batch: int, groups: int) -> int:
    """A day of /v2/iex frames; returns the messages per group."""
    import msgpack

    from alpaca_proxy.recording import fileformat

    stamp = msgpack.Timestamp(1764685800, 0)
    start = 1764685800 * 10**9
    body = [fileformat.pack_metadata(fileformat.metadata("stocks", "/v2/iex", start, "bench"))]
    compressor = fileformat.new_compressor()
    path = os.path.join(folder, "alpaca_v2_iex.2025-12-02.zst")
    counts = [0] * groups
    with open(path, "wb") as out:
        for n in range(frames):
            messages = []
            for i in range(batch):
                group = (n * batch + i) % groups
                counts[group] += 1
                symbol = "G%dS%d" % (group, i % 5)
                if i % 2:
                    messages.append({"T": "q", "S": symbol, "bx": "V", "bp": 100 + i, "bs": 3,
                                     "ax": "V", "ap": 100.01 + i, "as": 2, "c": ["R"],
                                     "z": "C", "t": stamp, "n": counts[group]})
                else:
                    messages.append({"T": "t", "S": symbol, "i": n, "x": "V", "p": 100 + i,
                                     "s": 100, "c": ["@"], "z": "C", "t": stamp,
                                     "n": counts[group]})
            body.append(fileformat.pack_frame(start + n * 100_000, True,
                                              msgpack.packb(messages, datetime=False)))
            if len(body) >= 2000:
                out.write(fileformat.encode_block(b"".join(body), compressor))
                body = []
        if body:
            out.write(fileformat.encode_block(b"".join(body), compressor))
    return counts[0]


def clients(port: int, groups: int, slow: int) -> None:
    """In this process: one client per group; prints one JSON report once the replay
    has gone quiet.  A client that subscribes after playback began joins where it is
    (as with a live market), so what is checked is that each client's messages are
    contiguous and in order from its first one: nothing lost at speed 0."""
    import msgpack
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    readers = []

    class Reader(WebSocketClientProtocol):
        count = 0
        first = last = None
        previous = None
        contiguous = True
        closed = None

        def onOpen(self):
            readers.append(self)
            self.sendMessage(msgpack.packb({"action": "auth", "key": "k", "secret": "s"}), True)

        def onMessage(self, payload, binary):
            now = time.time()
            for message in msgpack.unpackb(payload, timestamp=0):
                kind = message.get("T")
                if kind == "success" and message.get("msg") == "authenticated":
                    symbols = ["G%dS%d" % (self.factory.group, i) for i in range(5)]
                    self.sendMessage(msgpack.packb({"action": "subscribe", "trades": symbols,
                                                    "quotes": symbols}), True)
                elif kind in ("t", "q"):
                    if self.previous is not None and message["n"] != self.previous + 1:
                        self.contiguous = False
                    self.previous = message["n"]
                    self.count += 1
                    self.first = self.first or now
                    self.last = now
            if self.factory.slow and self.count % 20000 < 10 and self.count:
                self.transport.pauseProducing()  # stop reading for five seconds
                reactor.callLater(5.0, self.transport.resumeProducing)

        def onClose(self, wasClean, code, reason):
            self.closed = code

    def quiet():
        now = time.time()
        if len(readers) == groups and all(r.last and now - r.last > 8 for r in readers):
            print(json.dumps([{"count": r.count, "contiguous": r.contiguous, "first": r.first,
                               "last": r.last, "closed": r.closed} for r in readers]),
                  flush=True)
            reactor.stop()

    for group in range(groups):
        factory = WebSocketClientFactory("ws://127.0.0.1:%d/v2/iex" % port,
                                         headers={"Content-Type": "application/msgpack"})
        factory.protocol = Reader
        factory.group = group
        factory.slow = group < slow
        reactor.connectTCP("127.0.0.1", port, factory)
    LoopingCall(quiet).start(0.5)
    reactor.callLater(600, reactor.stop)
    reactor.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=50000)
    parser.add_argument("--batch", type=int, default=10, help="messages per frame")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--slow", type=int, default=0, help="clients that pause reading")
    parser.add_argument("--role", default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.role == "clients":
        clients(opts.port, opts.clients, opts.slow)
        return
    folder = tempfile.mkdtemp(prefix="alpaca-proxy-replay-bench-")
    try:
        expected = write_recording(folder, opts.frames, opts.batch, opts.clients)
        size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
        port = free_port()
        proxy = subprocess.Popen(
            ["alpaca-proxy", "--replay", folder, "--replay-speed", "0", "--listen",
             "tcp:%d:interface=127.0.0.1" % port, "--max-symbols", "1000000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("APCA_")})
        time.sleep(1.5)
        cpu_before = cpu_seconds(proxy.pid)
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--role", "clients", "--port",
             str(port), "--clients", str(opts.clients), "--slow", str(opts.slow)],
            capture_output=True, text=True).stdout
        cpu = cpu_seconds(proxy.pid) - cpu_before
        rss = memory_kib(proxy.pid, "VmHWM")
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=30)
        reports = json.loads(out or "[]")
        messages = opts.frames * opts.batch
        elapsed = (max(r["last"] for r in reports) - min(r["first"] for r in reports)
                   if reports else float("nan"))
        print(json.dumps({
            "frames": opts.frames, "messages": messages, "clients": opts.clients,
            "slow_clients": opts.slow, "recording_bytes": size,
            "bytes_per_message": round(size / messages, 2),
            "seconds": round(elapsed, 2),
            "delivered_per_s": round(sum(r.get("count", 0) for r in reports) / elapsed),
            "proxy_cpu_us_per_recorded_msg": round(cpu / messages * 1e6, 2),
            "proxy_peak_rss_mib": round(rss / 1024, 1),
            "first_client_complete": bool(reports) and max(r["count"] for r in reports)
            == expected,
            "all_contiguous_in_order": bool(reports) and all(r["contiguous"] for r in reports),
            "clients_closed": sum(1 for r in reports if r["closed"] is not None),
        }))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
