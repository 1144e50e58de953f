"""Fan-out benchmark: clients straight to a load generator ("direct") vs through the proxy.

Run by hand (not in CI), from the repository root with the proxy installed:

    python bench/fanout.py --rate 2000 --batch 10 --clients 10
    python bench/fanout.py --rate 100000 --batch 20 --clients 10 --duration 10
    python bench/fanout.py --clients 500 --layout identical --rate 2000
    python bench/fanout.py --encodings mixed
    python bench/fanout.py --search --batch 20 --clients 10
    python bench/fanout.py --mode levels      # direct, one proxy, a chain of two
    python bench/fanout.py --mode proxy --record /tmp/recording   # what recording costs
    python bench/fanout.py --mode proxy --layout identical --clients 500 --reader light
    python bench/fanout.py --mode relay --rate 100000 --batch 20   # the floor of a hop

Three roles, each its own process:

- ``generator``: an Alpaca-shaped websocket upstream emitting MessagePack trades and
  quotes at ``--rate`` messages/s in batches of ``--batch``, over symbol groups
  (one group per client with ``--layout disjoint``, one shared group with
  ``identical``); every message carries its emit time in ``et`` (nanoseconds), a
  field clients may ignore.
- ``clients``: raw websocket readers (a few processes, many connections each) that
  subscribe to their group and record emit-to-receipt latency, counts and losses.
- the driver (default): runs each mode, measures the proxy's CPU and peak RSS, and
  prints delivered msgs/s, p50/p99/max latency, loss, and the proxy/direct ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def symbol(group: int, index: int) -> str:
    return "G%dS%d" % (group, index)


# -- generator ----------------------------------------------------------------------


def generator(args) -> None:
    import msgpack
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    groups = args.groups
    group_of = {symbol(g, i): g for g in range(groups) for i in range(args.symbols)}
    subscribers: list[set] = [set() for _ in range(groups)]
    emitted = [0] * groups

    class Upstream(WebSocketServerProtocol):
        def connectionMade(self):
            super().connectionMade()
            # Autobahn's own attempt runs before the factory's options reach the
            # protocol and fails silently; with Nagle on, frames 5 ms apart on one
            # connection wait for the reader's delayed ACK (40 ms) now and then.
            self.transport.setTcpNoDelay(True)

        def onOpen(self):
            self.groups = set()
            self.sendMessage(msgpack.packb([{"T": "success", "msg": "connected"}]), True)

        def onMessage(self, payload, isBinary):
            message = (json.loads(payload) if payload[:1] == b"{"
                       else msgpack.unpackb(payload))
            if message.get("action") == "auth":
                self.sendMessage(msgpack.packb([{"T": "success", "msg": "authenticated"}]), True)
            elif message.get("action") == "subscribe":
                for channel in ("trades", "quotes"):
                    for name in message.get(channel) or ():
                        if name in group_of:
                            subscribers[group_of[name]].add(self)
                            self.groups.add(group_of[name])
                ack = {"T": "subscription"}
                names = [symbol(g, i) for g in sorted(self.groups) for i in range(args.symbols)]
                for channel in ("trades", "quotes", "bars", "updatedBars", "dailyBars",
                                "statuses", "lulds", "corrections", "cancelErrors"):
                    ack[channel] = names if channel in ("trades", "quotes") else []
                self.sendMessage(msgpack.packb([ack]), True)

        def onClose(self, wasClean, code, reason):
            for group in getattr(self, "groups", ()):
                subscribers[group].discard(self)

    factory = WebSocketServerFactory()
    factory.protocol = Upstream
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(port.getHost().port, flush=True)

    state = {"sent": 0, "group": 0, "seq": 0}
    stamp = msgpack.Timestamp(1714658587, 120450000)

    def tick():
        now = time.time()
        if now < args.start:
            return
        if now >= args.stop:
            loop.stop()
            print(json.dumps({"emitted": emitted}), flush=True)
            reactor.callLater(1, reactor.stop)
            return
        due = int((now - args.start) * args.rate) - state["sent"]
        while due >= args.batch:
            group = state["group"]
            state["group"] = (group + 1) % groups
            et = time.time_ns()
            batch = []
            for k in range(args.batch):
                state["seq"] += 1
                name = symbol(group, state["seq"] % args.symbols)
                if k % 2:
                    batch.append({"T": "q", "S": name, "bx": "V", "bp": 117.21, "bs": 3,
                                  "ax": "V", "ap": 117.24, "as": 2, "c": ["R"], "z": "C",
                                  "t": stamp, "et": et})
                else:
                    batch.append({"T": "t", "S": name, "i": state["seq"], "x": "V",
                                  "p": 117.22, "s": 100, "c": ["@"], "z": "C", "t": stamp,
                                  "et": et})
            payload = msgpack.packb(batch, datetime=False)
            emitted[group] += args.batch
            prepared = None
            for connection in subscribers[group]:
                if prepared is None:
                    prepared = factory.prepareMessage(payload, True)
                connection.sendPreparedMessage(prepared)
            state["sent"] += args.batch
            due -= args.batch

    loop = LoopingCall(tick)
    loop.start(0.002)
    reactor.run()


# -- relay (the floor) ---------------------------------------------------------------


def relay(args) -> None:
    """The least a websocket hop can do in Python on Twisted and Autobahn.

    Clients connect and subscribe as to the proxy (acks are canned); the relay
    subscribes once upstream and forwards every upstream frame, untouched and
    undecoded, to the clients of the frame's group (read from the first message's
    symbol with one regular expression): one Autobahn frame parse in, one prepared
    frame sent per client out (``net.write_now``: one ``send`` each, as the
    proxy's outbox does).  What the proxy costs beyond this is its own.
    """
    import re

    import msgpack
    from autobahn.twisted.websocket import (WebSocketClientFactory, WebSocketClientProtocol,
                                            WebSocketServerFactory, WebSocketServerProtocol)
    from twisted.internet import reactor

    from alpaca_proxy.net import write_now

    group_pattern = re.compile(rb"\xa1S[\xa0-\xbf]G(\d+)S")
    members: dict[int, list] = {}
    upstream: list = []
    wanted: list = []

    class Up(WebSocketClientProtocol):
        def connectionMade(self):
            super().connectionMade()
            self.transport.setTcpNoDelay(True)

        def onOpen(self):
            upstream.append(self)
            self.sendMessage(json.dumps({"action": "auth", "key": "K", "secret": "S"}).encode())
            for names in wanted:
                self.subscribe(names)

        def subscribe(self, names):
            self.sendMessage(json.dumps({"action": "subscribe", "trades": names,
                                         "quotes": names}).encode())

        def onMessageEnd(self):
            payload, self.message_data = b"".join(self.message_data), None
            found = group_pattern.search(payload, 0, 64)
            clients = members.get(int(found.group(1))) if found else None
            if clients:
                frame = factory.prepareMessage(payload, True).payloadHybi
                for client in clients:
                    write_now(client.transport, frame)

    class Down(WebSocketServerProtocol):
        def connectionMade(self):
            super().connectionMade()
            self.transport.setTcpNoDelay(True)

        def onOpen(self):
            self.sendMessage(msgpack.packb([{"T": "success", "msg": "connected"}]), True)

        def onMessage(self, payload, isBinary):
            message = json.loads(payload)
            if message.get("action") == "auth":
                self.sendMessage(msgpack.packb([{"T": "success", "msg": "authenticated"}]),
                                 True)
            elif message.get("action") == "subscribe":
                names = message.get("trades") or []
                group = int(re.match(r"G(\d+)S", names[0]).group(1))
                members.setdefault(group, []).append(self)
                wanted.append(names)
                if upstream:
                    upstream[0].subscribe(names)
                self.sendMessage(msgpack.packb([{"T": "subscription", "trades": names,
                                                 "quotes": names}]), True)

        def onClose(self, wasClean, code, reason):
            for clients in members.values():
                if self in clients:
                    clients.remove(self)

    factory = WebSocketServerFactory()
    factory.protocol = Down
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    up = WebSocketClientFactory("ws://127.0.0.1:%d/v2/iex" % args.upstream_port)
    up.protocol = Up
    up.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    reactor.connectTCP("127.0.0.1", args.upstream_port, up)
    print(port.getHost().port, flush=True)
    reactor.run()


# -- clients ------------------------------------------------------------------------


def clients(args) -> None:
    import msgpack
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet import reactor

    results: list[dict] = []
    connected: list = []
    ready: list = []

    class Reader(WebSocketClientProtocol):
        def onOpen(self):
            self.latencies: list[int] = []
            self.count = 0
            connected.append(self)
            self.sendMessage(json.dumps({"action": "auth", "key": "PKBENCH",
                                         "secret": "bench"}).encode(), False)

        def onMessage(self, payload, isBinary):
            now = time.time_ns()
            if args.reader == "light" and self.count and isBinary:
                # Count from the array header; decode one frame in 50 for latency.
                self.frames = getattr(self, "frames", 0) + 1
                head = payload[0]
                size = head & 0x0F if head & 0xF0 == 0x90 else int.from_bytes(
                    payload[1:3], "big")
                if self.frames % 50:
                    self.count += size
                    return
                first = msgpack.unpackb(payload)[0]
                if args.start_ns <= first.get("et", 0) < args.stop_ns:
                    self.latencies.append(now - first["et"])
                self.count += size
                return
            messages = msgpack.unpackb(payload) if isBinary else json.loads(payload)
            for message in messages:
                kind = message.get("T")
                if kind in ("t", "q"):
                    if args.start_ns <= message["et"] < args.stop_ns:
                        self.count += 1
                        self.latencies.append(now - message["et"])
                elif kind == "success" and message.get("msg") == "authenticated":
                    names = [symbol(self.factory.group, i) for i in range(args.symbols)]
                    self.sendMessage(json.dumps({"action": "subscribe", "trades": names,
                                                 "quotes": names}).encode(), False)
                elif kind == "subscription":
                    ready.append(self)
                    if len(ready) == len(args.client_groups):
                        print("ready", flush=True)

        def onClose(self, wasClean, code, reason):
            if hasattr(self, "latencies"):
                lat = sorted(self.latencies)
                results.append({
                    "group": self.factory.group, "count": self.count,
                    "p50": lat[len(lat) // 2] if lat else None,
                    "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
                    "max": lat[-1] if lat else None})
            if len(results) == len(connected):
                print(json.dumps(results), flush=True)
                reactor.callLater(0, reactor.stop)

    for group, encoding in zip(args.client_groups, args.client_encodings):
        headers = {"Content-Type": "application/msgpack"} if encoding == "msgpack" else {}
        factory = WebSocketClientFactory("ws://127.0.0.1:%d%s" % (args.port, args.path),
                                         headers=headers)
        factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
        factory.protocol = Reader
        factory.group = group
        reactor.connectTCP("127.0.0.1", args.port, factory)

    def close_all():
        for protocol in connected:
            protocol.sendClose()

    reactor.callLater(max(0.0, args.stop_ns / 1e9 - time.time()) + 2.0, close_all)
    reactor.run()


# -- driver -------------------------------------------------------------------------


def spawn(role: str, *arguments: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), role, *arguments],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """A process's CPU seconds (user + system), or one of its threads' (the main
    thread's id is the process id: the reactor's)."""
    path = "/proc/%d/stat" % pid if thread is None else "/proc/%d/task/%d/stat" % (pid, thread)
    with open(path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's memory figure from /proc (VmRSS now, VmHWM peak); 0 if it is gone."""
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def start_proxy(upstream_port: int, extra: list[str] = ()) -> tuple[subprocess.Popen, int]:
    """A proxy whose upstream is the generator, or another proxy; returns it and its port."""
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", "alpaca-proxy", "--listen", "tcp:%d:interface=127.0.0.1" % port,
         "--data-url", "ws://127.0.0.1:%d" % upstream_port, "--max-symbols", "1000000",
         "--max-clients", "0",
         "--max-request-symbols", "1000000", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("APCA_")})
    time.sleep(1.5)
    return proxy, port


def run_mode(opts, mode: str) -> dict:
    """One measurement: generator, optionally the proxy, and the client processes."""
    setup = 4.0 + opts.clients / 100
    start = time.time() + setup
    stop = start + opts.duration
    groups = opts.clients if opts.layout == "disjoint" else 1
    gen = spawn("generator", "--rate", str(opts.rate), "--batch", str(opts.batch),
                "--groups", str(groups), "--symbols", str(opts.symbols),
                "--start", repr(start), "--stop", repr(stop))
    gen_port = int(gen.stdout.readline())
    proxies: list[subprocess.Popen] = []
    port, path = gen_port, "/v2/iex"
    # "proxy": clients -> proxy -> generator; "chain": clients -> proxy -> proxy -> generator.
    if mode == "relay":
        hop = spawn("relay", "--upstream-port", str(gen_port))
        port = int(hop.stdout.readline())
        proxies.append(hop)
    for level in range({"direct": 0, "proxy": 1, "chain": 2, "relay": 0}[mode]):
        # With --record, the proxy nearest upstream records what it receives.
        extra = ["--record", opts.record] if opts.record and level == 0 else []
        proxy, port = start_proxy(port, extra)
        proxies.append(proxy)
    encodings = []
    for n in range(opts.clients):
        if opts.encodings == "mixed":
            encodings.append("json" if n % 2 else "msgpack")
        else:
            encodings.append(opts.encodings)
    client_groups = [n % groups for n in range(opts.clients)]
    procs = []
    per_proc = -(-opts.clients // opts.client_procs)
    for first in range(0, opts.clients, per_proc):
        procs.append(spawn(
            "clients", "--port", str(port), "--path", path, "--symbols", str(opts.symbols),
            "--start-ns", str(int(start * 1e9)), "--stop-ns", str(int(stop * 1e9)),
            "--client-groups", ",".join(map(str, client_groups[first:first + per_proc])),
            "--client-encodings", ",".join(encodings[first:first + per_proc]),
            "--reader", opts.reader))
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("a client process failed to subscribe")
    cpu_before = sum(cpu_seconds(proxy.pid) for proxy in proxies)
    reactor_before = sum(cpu_seconds(proxy.pid, proxy.pid) for proxy in proxies)
    time.sleep(max(0.0, stop - time.time()))
    cpu_after = sum(cpu_seconds(proxy.pid) for proxy in proxies)
    reactor_after = sum(cpu_seconds(proxy.pid, proxy.pid) for proxy in proxies)
    emitted = json.loads(gen.stdout.readline())["emitted"]
    reports = [r for proc in procs for r in json.loads(proc.stdout.readline())]
    for proc in procs:
        proc.wait(timeout=30)
    rss = max((memory_kib(proxy.pid, "VmHWM") for proxy in proxies), default=0)
    for proxy in proxies:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=30)
    gen.wait(timeout=30)
    expected = sum(emitted[r["group"]] for r in reports)
    delivered = sum(r["count"] for r in reports)
    p50 = sorted(r["p50"] for r in reports if r["p50"] is not None)
    p99 = sorted(r["p99"] for r in reports if r["p99"] is not None)
    return {
        "mode": mode, "delivered_per_s": delivered / opts.duration,
        "p50_ms": p50[len(p50) // 2] / 1e6 if p50 else None,
        "p99_ms": max(p99) / 1e6 if p99 else None,
        "max_ms": max(r["max"] for r in reports if r["max"] is not None) / 1e6
        if delivered else None,
        "loss": 1 - delivered / expected if expected else None,
        # Over every proxy of the mode (two in a chain); RSS is the larger one's.
        "proxy_cpu_pct": 100 * (cpu_after - cpu_before) / opts.duration if proxies else None,
        "proxy_cpu_us_per_upstream_msg": 1e6 * (cpu_after - cpu_before) / max(1, sum(emitted))
        if proxies else None,
        # The reactor thread alone (without --record's writer thread, say).
        "reactor_cpu_us_per_upstream_msg":
        1e6 * (reactor_after - reactor_before) / max(1, sum(emitted)) if proxies else None,
        "proxy_peak_rss_mib": rss / 1024 if proxies else None,
    }


def table(rows: list[dict]) -> str:
    columns = ["mode", "delivered_per_s", "p50_ms", "p99_ms", "max_ms", "loss",
               "proxy_cpu_pct", "proxy_cpu_us_per_upstream_msg", "reactor_cpu_us_per_upstream_msg",
               "proxy_peak_rss_mib"]
    lines = [" | ".join(columns)]
    for row in rows:
        lines.append(" | ".join(
            "-" if row.get(c) is None else (
                "%.3f" % row[c] if isinstance(row[c], float) else str(row[c]))
            for c in columns))
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("generator", "clients", "relay"):
        role = sys.argv.pop(1)
        parser = argparse.ArgumentParser()
        if role == "relay":
            parser.add_argument("--upstream-port", type=int, required=True)
            relay(parser.parse_args())
        elif role == "generator":
            for name, kind in [("rate", float), ("batch", int), ("groups", int),
                               ("symbols", int), ("start", float), ("stop", float)]:
                parser.add_argument("--" + name, type=kind, required=True)
            generator(parser.parse_args())
        else:
            for name, kind in [("port", int), ("path", str), ("symbols", int),
                               ("start-ns", int), ("stop-ns", int)]:
                parser.add_argument("--" + name, type=kind, required=True)
            parser.add_argument("--reader", default="full")
            parser.add_argument("--client-groups", type=lambda v: [int(x) for x in v.split(",")])
            parser.add_argument("--client-encodings", type=lambda v: v.split(","))
            clients(parser.parse_args())
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=2000, help="messages/s upstream emits")
    parser.add_argument("--batch", type=int, default=10, help="messages per upstream frame")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--symbols", type=int, default=5, help="symbols per client group")
    parser.add_argument("--layout", choices=["disjoint", "identical"], default="disjoint")
    parser.add_argument("--encodings", choices=["msgpack", "json", "mixed"], default="msgpack")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--mode", choices=["both", "direct", "proxy", "chain", "levels",
                                           "relay"],
                        default="both", help="both: direct and proxy; levels: direct, proxy"
                        " and a 2-proxy chain, with the latency each level adds; relay: a"
                        " minimal websocket relay in the proxy's place (forwards frames"
                        " undecoded), the floor of a Python hop on Twisted and Autobahn")
    parser.add_argument("--client-procs", type=int, default=0,
                        help="client processes (default: one per 50 clients, at most 4)")
    parser.add_argument("--reader", choices=["full", "light"], default="full",
                        help="light: clients count messages from each frame's array header"
                        " and decode one frame in 50 (for latency), so that hundreds of"
                        " clients do not saturate before the proxy does (MessagePack)")
    parser.add_argument("--record", metavar="DIR",
                        help="the proxy records every upstream frame to DIR (run with and"
                        " without to see what recording costs)")
    parser.add_argument("--search", action="store_true",
                        help="raise the rate until loss or p99 > 50 ms; report the ceiling")
    opts = parser.parse_args()
    if not opts.client_procs:
        opts.client_procs = max(1, min(4, -(-opts.clients // 50)))
    if opts.search:
        first_rate = opts.rate
        for mode in ("direct", "proxy") if opts.mode == "both" else (opts.mode,):
            rate, ceiling = first_rate, None
            while rate <= 400_000:
                opts.rate = rate
                row = run_mode(opts, mode)
                print(json.dumps(dict(row, rate=rate)), flush=True)
                if (row["loss"] or 0) > 0.001 or (row["p99_ms"] or 0) > 50:
                    break
                ceiling, rate = rate, rate * 1.5
            print("%s ceiling: %s msgs/s" % (mode, ceiling), flush=True)
        return
    modes = {"both": ["direct", "proxy"], "levels": ["direct", "proxy", "chain"]}.get(
        opts.mode, [opts.mode])
    rows = [run_mode(opts, mode) for mode in modes]
    print(json.dumps({"parameters": vars(opts)}))
    print(table(rows))
    if len(rows) >= 2 and rows[0]["p99_ms"] and rows[1]["p99_ms"]:
        print("proxy/direct: p99 x%.2f, p50 +%.3f ms, delivered x%.3f" % (
            rows[1]["p99_ms"] / rows[0]["p99_ms"], rows[1]["p50_ms"] - rows[0]["p50_ms"],
            rows[1]["delivered_per_s"] / rows[0]["delivered_per_s"]))
    if len(rows) == 3 and all(row["p50_ms"] for row in rows):
        print("per level added: p50 +%.3f ms (first proxy), +%.3f ms (second);"
              " p99 +%.3f ms, +%.3f ms" % (
                  rows[1]["p50_ms"] - rows[0]["p50_ms"], rows[2]["p50_ms"] - rows[1]["p50_ms"],
                  rows[1]["p99_ms"] - rows[0]["p99_ms"], rows[2]["p99_ms"] - rows[1]["p99_ms"]))


if __name__ == "__main__":
    main()
