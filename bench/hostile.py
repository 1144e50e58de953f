"""Hostile clients against a bystander: no client may cost another its data.

Run by hand (not in CI), from the repository root with the proxy installed:

    python bench/hostile.py                     # every case, 20 s each
    python bench/hostile.py --cases churn,pings --duration 30

For each case a fresh proxy runs on the simulated market (``--simulate --sim-rate 10``);
a bystander subscribes to the trades and quotes of five of the simulator's stocks
(100 messages/s, a frame every 100 ms) and records the gaps between its data frames
and its trades per tick (the simulator trades every subscribed symbol once per tick,
all with the tick's time, so a tick with fewer than five trades lost some).  Attackers that
subscribe use the ``lulds`` channel, for which the simulator makes no data: what
they cost is the proxy's own work, not data they asked for.  While
it listens, an attacker process does one bad thing for ``--duration`` seconds.
Printed per case: the bystander's longest gap between data frames, messages lost,
whether it kept its connection, the proxy's RSS growth (peak over the start) and
the log lines the proxy wrote during the attack.

Target (issue: isolation): gap <= 250 ms, 0 lost, connected, RSS growth <= 64 MiB.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fanout import free_port, memory_kib  # noqa: E402

KEY, SECRET = "PKBYSTANDER", "bystander-secret"
CASES = ["pings", "big-message", "pipelining", "churn", "unfinished", "wrong-secrets",
         "brute-force", "slowloris", "log-flood"]


# -- a raw websocket client for the attacker (blocking sockets, no framework) --------


def handshake(port: int, path: str = "/v2/iex", timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                  "Sec-WebSocket-Version: 13\r\nContent-Type: application/json\r\n\r\n"
                  % (path, port, key)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during handshake")
        head += chunk
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    return sock


def frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", first, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, size)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if size < 4096 else \
        (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (size // 4 + 1))[:size],
                                                         "big")).to_bytes(size, "big")
    return header + mask + masked


def send_json(sock: socket.socket, message) -> None:
    sock.sendall(frame(json.dumps(message).encode()))


def login(port: int, key: str = KEY, secret: str = SECRET) -> socket.socket:
    sock = handshake(port)
    send_json(sock, {"action": "auth", "key": key, "secret": secret})
    return sock


def attempt(action, *args) -> None:
    """Run one attack step; the proxy closing on us is the expected outcome."""
    try:
        action(*args)
    except (OSError, ConnectionError):
        pass


def attacker(case: str, port: int, duration: float) -> None:
    stop = time.time() + duration
    held: list[socket.socket] = []
    if case == "pings":
        sock = login(port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ping = frame(b"p" * 125, opcode=9)
        while time.time() < stop:
            try:
                sock.sendall(ping * 64)
            except OSError:
                sock = login(port)  # dropped as it should be: do it again
    elif case == "big-message":
        import msgpack

        payload = frame(msgpack.packb([None] * 7_800_000), opcode=2)
        while time.time() < stop:
            attempt(lambda: handshake(port).sendall(payload))
    elif case == "pipelining":
        while time.time() < stop:
            def pipeline():
                sock = login(port)
                for n in range(30):
                    send_json(sock, {"action": "subscribe", "lulds": [
                        "P%d_%d" % (n, i) for i in range(10_000)]})
                held.append(sock)
            attempt(pipeline)
            time.sleep(0.5)
    elif case == "churn":
        symbols = ["C%d" % i for i in range(10_000)]
        sock = login(port)
        action = "subscribe"
        while time.time() < stop:
            try:
                send_json(sock, {"action": action, "lulds": symbols})
            except OSError:
                sock = login(port)
            action = "unsubscribe" if action == "subscribe" else "subscribe"
            time.sleep(0.025)  # within the rate limit: the proxy must absorb it anyway
    elif case == "unfinished":
        while time.time() < stop:
            for _ in range(30):
                def unfinished():
                    sock = handshake(port)
                    sock.sendall(frame(b"{", opcode=1, fin=False))
                    for _ in range(20000):
                        sock.sendall(frame(b"x", opcode=0, fin=False))
                    held.append(sock)
                attempt(unfinished)
            time.sleep(1)
    elif case == "wrong-secrets":
        while time.time() < stop:
            def guess():
                sock = login(port, KEY, "wrong-%d" % random.getrandbits(64))
                sock.recv(4096)
                sock.close()
            attempt(guess)
            attempt(lambda: login(port, "K" * (8 << 20), "x").close())
    elif case == "brute-force":
        while time.time() < stop:
            def guess():
                sock = login(port, KEY, "guess-%d" % random.getrandbits(64))
                sock.settimeout(0.2)
                try:
                    sock.recv(4096)
                except socket.timeout:
                    pass
                sock.close()
            attempt(guess)
    elif case == "slowloris":
        for _ in range(900):
            def slow():
                sock = socket.create_connection(("127.0.0.1", port), timeout=2)
                sock.sendall(b"G")
                held.append(sock)
            attempt(slow)
        while time.time() < stop:
            for sock in list(held):
                try:
                    sock.sendall(b"E")
                except OSError:
                    held.remove(sock)
            time.sleep(5)
    elif case == "log-flood":
        while time.time() < stop:
            attempt(lambda: handshake(port, "/no/such/stream").close())
            time.sleep(0.01)
    for sock in held:
        sock.close()


# -- the bystander (Twisted, in this process) ----------------------------------------


def bystander(port: int, duration: float, ready_file: str) -> None:
    import msgpack
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet import reactor

    from alpaca_proxy.simulator.alpaca import UNIVERSE

    symbols = UNIVERSE["stocks"][:5]
    report = {"gap_ms": 0.0, "lost": 0, "received": 0, "connected": False}
    trades_per_tick: dict = {}

    class Bystander(WebSocketClientProtocol):
        last_frame = None

        def onOpen(self):
            self.sendMessage(msgpack.packb({"action": "auth", "key": KEY, "secret": SECRET}),
                             True)

        def onMessage(self, payload, binary):
            now = time.monotonic()
            messages = msgpack.unpackb(payload, timestamp=0)
            if messages[0].get("msg") == "authenticated":
                self.sendMessage(msgpack.packb({"action": "subscribe", "trades": symbols,
                                                "quotes": symbols}), True)
                return
            data = [m for m in messages if m.get("T") in ("t", "q")]
            if not data:
                if messages[0].get("T") == "subscription":
                    report["connected"] = True
                    open(ready_file, "w").close()
                return
            if self.last_frame is not None:
                report["gap_ms"] = max(report["gap_ms"], (now - self.last_frame) * 1000)
            self.last_frame = now
            for message in data:
                report["received"] += 1
                if message["T"] == "t":
                    trades_per_tick[message["t"]] = trades_per_tick.get(message["t"], 0) + 1

        def onClose(self, wasClean, code, reason):
            report["connected"] = False

    factory = WebSocketClientFactory("ws://127.0.0.1:%d/v2/iex" % port,
                                     headers={"Content-Type": "application/msgpack"})
    factory.protocol = Bystander
    reactor.connectTCP("127.0.0.1", port, factory)

    def finish():
        report["lost"] = sum(len(symbols) - count for count in trades_per_tick.values())
        print(json.dumps(report), flush=True)
        reactor.stop()

    reactor.callLater(duration, finish)
    reactor.run()


# -- the driver ------------------------------------------------------------------------


def run_case(case: str, duration: float) -> dict:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APCA_", "ALPACA_PROXY"))}
    if case == "brute-force":
        env.update(APCA_API_KEY_ID=KEY, APCA_API_SECRET_KEY=SECRET)  # accounts configured
    log_path = "/tmp/alpaca-proxy-hostile-%s.log" % (case,)
    with open(log_path, "w") as log:
        proxy = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "alpaca-proxy", "--simulate", "--sim-rate", "10",
             "--listen", "tcp:%d:interface=127.0.0.1" % port],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    ready = "/tmp/alpaca-proxy-hostile-ready"
    if os.path.exists(ready):
        os.remove(ready)
    try:
        time.sleep(1.5)
        watcher = subprocess.Popen([sys.executable, os.path.abspath(__file__), "bystander",
                                    str(port), str(duration + 6), ready],
                                   stdout=subprocess.PIPE, text=True)
        while not os.path.exists(ready):
            time.sleep(0.1)
        time.sleep(2)
        rss_before = memory_kib(proxy.pid)
        lines_before = sum(1 for _ in open(log_path))
        attack = subprocess.Popen([sys.executable, os.path.abspath(__file__), "attack", case,
                                   str(port), str(duration)])
        peak = rss_before
        while attack.poll() is None:
            peak = max(peak, memory_kib(proxy.pid))
            time.sleep(0.2)
        report = json.loads(watcher.communicate()[0].strip().splitlines()[-1])
        report["rss_growth_mib"] = (peak - rss_before) / 1024
        report["log_lines"] = sum(1 for _ in open(log_path)) - lines_before
        return report
    finally:
        proxy.terminate()
        proxy.wait()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "attack":
        attacker(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "bystander":
        bystander(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()
    print("case | longest gap (ms) | lost | received | connected | RSS growth (MiB) |"
          " log lines | target met")
    for case in args.cases.split(","):
        r = run_case(case, args.duration)
        met = (r["gap_ms"] <= 250 and r["lost"] == 0 and r["connected"]
               and r["rss_growth_mib"] <= 64)
        print("%s | %.0f | %d | %d | %s | %.1f | %d | %s" % (
            case, r["gap_ms"], r["lost"], r["received"], r["connected"], r["rss_growth_mib"],
            r["log_lines"], "yes" if met else "NO"), flush=True)


if __name__ == "__main__":
    main()
