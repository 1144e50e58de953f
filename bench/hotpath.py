"""The proxy's own work per upstream frame, without sockets: split, route, encode, write.

One process, no generator, no reader: upstream frames go straight into the real
``AlpacaDataLink`` frame handler, through the real ``DataSession``, router and
fan-out, to real client protocols whose transports only keep a byte count.  What
it leaves out (epoll, ``send`` syscalls, Autobahn's frame parsing on the way in)
is what ``bench/fanout.py`` measures; this one isolates the Python hot path so that
a change to it can be measured in seconds, to a few percent.

    python bench/hotpath.py --clients 10 --layout disjoint --batch 20
    python bench/hotpath.py --clients 500 --layout identical --batch 10
    python bench/hotpath.py --profile      # cProfile's top functions as well
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

import msgpack
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from alpaca_proxy.credentials import Credentials
from alpaca_proxy.dialects.alpaca_data import DIALECTS
from alpaca_proxy.downstream.alpaca_data import AlpacaDataProtocol
from alpaca_proxy.downstream.client import ClientFactory
from alpaca_proxy.proxy import Limits, Proxy
from alpaca_proxy.streams import STOCKS, Stream
from alpaca_proxy.upstream.alpaca_data import AlpacaDataLink
from alpaca_proxy.upstream.session import DataSession

PAIR = Credentials("PKBENCH", "bench-secret")
STAMP = msgpack.Timestamp(1714658587, 120450000)


class CountingTransport:
    """A transport that keeps nothing: what a kernel socket would have taken."""

    disconnecting = False

    def __init__(self) -> None:
        self.written = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.writes += 1

    def writeSequence(self, data) -> None:
        for part in data:
            self.write(part)

    def registerProducer(self, producer, streaming) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def setTcpNoDelay(self, enabled) -> None:
        pass

    def getPeer(self):
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", 8765)

    def loseConnection(self) -> None:
        pass

    abortConnection = loseConnection


class OnePool:
    def __init__(self, session):
        self.session = session

    def authenticate(self, stream, credentials):
        from twisted.internet.defer import succeed
        return succeed(self.session)

    def join(self, session, client):
        session.attach(client)

    def leave(self, session, client):
        session.detach(client)


def handshake(content_type: str) -> bytes:
    return ("GET /v2/iex HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\nContent-Type: %s\r\n\r\n" % content_type).encode()


def client_frame(message: dict) -> bytes:
    """A masked text frame, as a client sends it."""
    payload = json.dumps(message).encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        head = bytes((0x81, 0x80 | len(payload)))
    else:
        head = bytes((0x81, 0x80 | 126)) + len(payload).to_bytes(2, "big")
    return head + mask + masked


def symbol(group: int, index: int) -> str:
    return "G%03dS%02d" % (group, index)


def frames(count: int, batch: int, groups: int, symbols: int) -> list[bytes]:
    """Upstream frames as the fan-out bench's generator makes them (a frame per group)."""
    made, seq = [], 0
    for n in range(count):
        group = n % groups
        messages = []
        for k in range(batch):
            seq += 1
            name = symbol(group, seq % symbols)
            if k % 2:
                messages.append({"T": "q", "S": name, "bx": "V", "bp": 117.21, "bs": 3,
                                 "ax": "V", "ap": 117.24, "as": 2, "c": ["R"], "z": "C",
                                 "t": STAMP})
            else:
                messages.append({"T": "t", "S": name, "i": seq, "x": "V", "p": 117.22,
                                 "s": 100, "c": ["@"], "z": "C", "t": STAMP})
        made.append(msgpack.packb(messages, datetime=False))
    return made


def build(opts):
    clock = Clock()
    session = DataSession(Stream(STOCKS, "/v2/iex"), PAIR, clock, DIALECTS[STOCKS])

    class Link:
        ready = True

        def send_change(self, action, keys):
            pass

    session.link = Link()
    session.link_ready()
    proxy = Proxy(clock, OnePool(session), limits=Limits(ping_interval=0))
    factory = ClientFactory(proxy, AlpacaDataProtocol)
    groups = opts.clients if opts.layout == "disjoint" else 1
    transports = []
    for n in range(opts.clients):
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000 + n))
        transport = CountingTransport()
        protocol.makeConnection(transport)
        encoding = "application/json" if (opts.encodings == "json" or (
            opts.encodings == "mixed" and n % 2)) else "application/msgpack"
        protocol.dataReceived(handshake(encoding))
        protocol.dataReceived(client_frame({"action": "auth", "key": PAIR.key,
                                            "secret": PAIR.secret}))
        group = n % groups
        protocol.dataReceived(client_frame({
            "action": "subscribe",
            "trades": [symbol(group, k) for k in range(opts.symbols)],
            "quotes": [symbol(group, k) for k in range(opts.symbols)]}))
        clock.advance(0.01)
        transports.append(transport)
    # The router sent the union upstream; a real upstream acks it.
    session.acked(set(session.router.wanted))
    clock.advance(0.01)
    link = AlpacaDataLink.__new__(AlpacaDataLink)
    link.receiver, link.ready = session, True
    link._log = None
    return link, session, transports, groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--layout", choices=("disjoint", "identical"), default="disjoint")
    parser.add_argument("--encodings", choices=("msgpack", "json", "mixed"), default="msgpack")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--symbols", type=int, default=5)
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    opts = parser.parse_args()
    link, session, transports, groups = build(opts)
    upstream = frames(opts.frames, opts.batch, groups, opts.symbols)
    on_frame = link._on_frame
    for payload in upstream[:1000]:
        on_frame(payload, True)
    before = sum(t.written for t in transports)
    if before == 0:
        raise SystemExit("no client got anything: the set-up is wrong")
    best = None
    for _ in range(opts.rounds):
        started = time.perf_counter()
        for payload in upstream:
            on_frame(payload, True)
        elapsed = time.perf_counter() - started
        best = elapsed if best is None else min(best, elapsed)
    writes = sum(t.writes for t in transports)
    print(json.dumps({
        "clients": opts.clients, "layout": opts.layout, "encodings": opts.encodings,
        "batch": opts.batch,
        "us_per_frame": round(1e6 * best / opts.frames, 2),
        "us_per_upstream_msg": round(1e6 * best / (opts.frames * opts.batch), 3),
        "writes_per_frame": round(writes / (opts.frames * (opts.rounds + 0.05)), 2),
    }))
    if opts.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for payload in upstream:
            on_frame(payload, True)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
