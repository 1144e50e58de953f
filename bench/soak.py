"""A bounded loopback soak of the installed proxy (run by hand, not in CI).

One process here plays the market and the algorithms; the proxy runs as its own
``twistd alpaca-proxy`` process, so its memory is measured alone:

- a fake Alpaca upstream (the project's simulator) on 127.0.0.1, every trade
  carrying a per-symbol sequence number ``sq`` (a field clients may ignore), and
  every upstream connection dropped without a close handshake every few minutes;
- ``--clients`` client slots, each connecting, subscribing 1-5 random symbols,
  changing its subscription now and then, leaving after a random while and
  coming back;
- every ``--sample`` seconds one line: elapsed time, proxy RSS, clients, and
  totals; at the end a summary.

Each client checks that it only gets symbols it is subscribed to (violations)
and counts sequence gaps per symbol (messages missed while subscribed), which
are expected only around the upstream drops.

usage: python bench/soak.py [--duration 1800] [--clients 20] [--rate 20]
                            [--drop-every 180] [--sample 30]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import msgpack
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.task import LoopingCall, deferLater

from alpaca_proxy.simulator.alpaca import UNIVERSE, FakeAlpacaFactory, SimulatedMarket
from fanout import memory_kib  # the scripts' folder is on sys.path

SYMBOLS = UNIVERSE["stocks"] + ["IBM", "ORCL", "INTC", "CSCO", "NFLX", "DIS", "KO", "PEP"]


class SequencedMarket(SimulatedMarket):
    """The simulated market, with a per-symbol sequence number on every trade."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sequence: dict[str, int] = {}
        self.emitted = 0

    def _activity(self, kind, symbol, now):
        events = super()._activity(kind, symbol, now)
        for channel, message in events:
            if channel == "trades":
                self.sequence[symbol] = self.sequence.get(symbol, 0) + 1
                message["sq"] = self.sequence[symbol]
                self.emitted += 1
        return events


class Totals:
    def __init__(self):
        self.received = 0
        self.violations = 0
        self.gaps = 0
        self.sessions = 0
        self.errors = 0
        self.per_client: list[dict] = []


class SoakClient(WebSocketClientProtocol):
    def onOpen(self):
        self.wanted: set[str] = set()
        self.last: dict[str, int] = {}
        self.stats = {"received": 0, "violations": 0, "gaps": 0}
        self.send({"action": "auth", "key": "PKSOAK", "secret": "soak-secret"})

    def send(self, message):
        self.sendMessage(msgpack.packb(message), isBinary=True)

    def onMessage(self, payload, isBinary):
        totals = self.factory.totals
        for message in msgpack.unpackb(payload, timestamp=0):
            kind = message.get("T")
            if kind == "success" and message.get("msg") == "authenticated":
                self.change()
            elif kind == "subscription":
                self.wanted = set(message["trades"])
            elif kind == "error":
                totals.errors += 1
            elif kind == "t":
                symbol, sq = message["S"], message.get("sq", 0)
                self.stats["received"] += 1
                totals.received += 1
                if symbol not in self.wanted:
                    self.stats["violations"] += 1
                    totals.violations += 1
                previous = self.last.get(symbol)
                if previous is not None and sq > previous + 1:
                    self.stats["gaps"] += sq - previous - 1
                    totals.gaps += sq - previous - 1
                self.last[symbol] = sq

    def change(self):
        """Subscribe a random set, dropping part of the old one."""
        if self.wanted and random.random() < 0.5:
            gone = random.choice(sorted(self.wanted))
            self.last.pop(gone, None)
            self.send({"action": "unsubscribe", "trades": [gone], "quotes": [gone]})
        new = random.sample(SYMBOLS, random.randint(1, 3))
        for symbol in new:
            self.last.pop(symbol, None)
        self.send({"action": "subscribe", "trades": new, "quotes": new})

    def onClose(self, wasClean, code, reason):
        if hasattr(self, "stats"):
            self.factory.totals.per_client.append(self.stats)
        if self.factory.done is not None and not self.factory.done.called:
            self.factory.done.callback(None)


@defer.inlineCallbacks
def client_slot(port: int, totals: Totals, until: float):
    """Connect, churn subscriptions, leave, come back; until the soak ends."""
    while time.time() < until:
        factory = WebSocketClientFactory("ws://127.0.0.1:%d/v2/iex" % port,
                                         headers={"Content-Type": "application/msgpack"})
        factory.protocol = SoakClient
        factory.totals = totals
        factory.done = defer.Deferred()
        try:
            client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
        except Exception:
            totals.errors += 1
            yield deferLater(reactor, 1, lambda: None)
            continue
        totals.sessions += 1
        stay = min(random.uniform(10, 120), max(0.0, until - time.time()))
        for _ in range(int(stay // 15)):
            yield deferLater(reactor, 15, lambda: None)
            if client.state == client.STATE_OPEN:
                client.change()
        if client.state == client.STATE_OPEN:
            client.sendClose()
        else:  # never got past the handshake: nothing to close politely
            client.dropConnection(abort=True)
        try:
            yield factory.done.addTimeout(10, reactor)
        except defer.TimeoutError:
            totals.errors += 1
            client.dropConnection(abort=True)
        yield deferLater(reactor, random.uniform(1, 5), lambda: None)




class ProxyProcess(protocol.ProcessProtocol):
    def __init__(self, log_path):
        self.log = open(log_path, "wb")
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.log.write(data)

    errReceived = outReceived

    def processEnded(self, reason):
        self.log.close()
        self.ended.callback(None)


@defer.inlineCallbacks
def soak(args):
    random.seed(args.seed)
    market = SequencedMarket(reactor, seed=args.seed, rate=args.rate)
    upstream = FakeAlpacaFactory(market=market)
    upstream_port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(upstream)
    market.start()
    proxy_port = args.port
    log_path = os.path.abspath("soak-proxy.log")
    proxy = ProxyProcess(log_path)
    env = dict(os.environ)
    for name in ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY"):
        env.pop(name, None)
    process = reactor.spawnProcess(proxy, sys.executable, [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "alpaca-proxy", "--listen",
        "tcp:%d:interface=127.0.0.1" % proxy_port,
        "--data-url", "ws://127.0.0.1:%d" % upstream_port.getHost().port, "--linger", "5",
        "--max-clients", "0",
    ], env=env)
    yield deferLater(reactor, 2, lambda: None)
    started = time.time()
    until = started + args.duration
    totals = Totals()
    drops = 0

    def drop():
        nonlocal drops
        drops += 1
        for connection in list(upstream.connections):
            connection.drop()

    dropper = LoopingCall(drop)
    dropper.start(args.drop_every, now=False)
    samples = []

    def sample():
        line = {"t": round(time.time() - started), "rss_kib": memory_kib(process.pid),
                "clients": sum(1 for c in upstream.connections), "received": totals.received,
                "emitted_trades": market.emitted, "violations": totals.violations,
                "gaps": totals.gaps, "sessions": totals.sessions, "drops": drops}
        samples.append(line)
        print(json.dumps(line), flush=True)

    sampler = LoopingCall(sample)
    sampler.start(args.sample)
    yield defer.DeferredList([client_slot(proxy_port, totals, until)
                              for _ in range(args.clients)])
    sampler.stop()
    dropper.stop()
    sample()
    process.signalProcess("TERM")
    yield proxy.ended
    with open(log_path) as log:
        text = log.read()
    reconnects = max(0, text.count(" authenticated (PKSOAK)") - 1)
    rss = [s["rss_kib"] for s in samples if s["rss_kib"]]
    print(json.dumps({
        "summary": True, "duration_s": args.duration, "client_slots": args.clients,
        "client_sessions": totals.sessions, "trades_received": totals.received,
        "violations": totals.violations, "gaps": totals.gaps, "errors": totals.errors,
        "upstream_drops": drops, "proxy_reconnects": reconnects,
        "rss_kib_first": rss[0] if rss else None, "rss_kib_max": max(rss) if rss else None,
        "rss_kib_last": rss[-1] if rss else None,
        "secret_in_log": "soak-secret" in text,
    }), flush=True)
    reactor.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rate", type=float, default=20, help="market ticks per second")
    parser.add_argument("--drop-every", type=float, default=180)
    parser.add_argument("--sample", type=float, default=30)
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    reactor.callWhenRunning(soak, args)
    reactor.run()


if __name__ == "__main__":
    main()
