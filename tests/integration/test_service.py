"""The service tree on the real reactor: --simulate end to end, JSON log lines."""

import json
import os
import socket
import sys

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from alpaca_proxy.options import Options
from alpaca_proxy.service import makeService
from tests.support import connect, listening_port


class SimulatedServiceTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def simulated(self, environ):
        """The whole service tree on the simulated market, a fast one; fires (tree, port)."""
        from twisted.internet import reactor

        options = Options(environ=environ)
        options.parseOptions(["--simulate", "--sim-rate", "50", "--listen",
                              "tcp:0:interface=127.0.0.1"])
        tree = makeService(options, reactor)
        yield tree.startService()
        self.addCleanup(tree.stopService)
        port = (yield listening_port(tree.getServiceNamed("listener"))).getHost().port
        return tree, port

    @defer.inlineCallbacks
    def test_simulated_market_through_the_real_upstream_path(self):
        """--simulate: a client gets simulated trades for its symbol via a real upstream socket."""
        tree, port = yield self.simulated({})
        client = yield connect(port, "/v2/iex")
        self.addCleanup(lambda: client.sendClose() or client.closed)
        yield client.next()
        client.send({"action": "auth", "key": "anything", "secret": "goes"})
        self.assertEqual((yield client.next()), [{"T": "success", "msg": "authenticated"}])
        client.send({"action": "subscribe", "trades": ["AAPL"], "quotes": ["MSFT"]})
        self.assertEqual((yield client.next())[0]["T"], "subscription")
        seen = set()
        while seen != {("t", "AAPL"), ("q", "MSFT")}:
            for message in (yield client.next()):
                seen.add((message["T"], message["S"]))
                self.assertIn((message["T"], message["S"]), {("t", "AAPL"), ("q", "MSFT")})
        [session] = tree.getServiceNamed("simulator").factory.authenticated()
        self.assertEqual(session.headers.get("content-type"), "application/msgpack")

    @defer.inlineCallbacks
    def test_simulated_polygon_market(self):
        """--simulate with USE_POLYGON: Polygon's protocol at / and on /{market}."""
        _, port = yield self.simulated({"USE_POLYGON": "true"})
        for path, params, wanted in (("/", "T.AAPL", {("T", "AAPL")}),
                                     ("/crypto", "XQ.*", {("XQ", "BTC-USD"), ("XQ", "ETH-USD")})):
            client = yield connect(port, path)
            self.addCleanup(lambda c=client: c.sendClose() or c.closed)
            self.assertEqual((yield client.next())[0]["status"], "connected")
            client.send({"action": "auth", "params": "any-key"})
            self.assertEqual((yield client.next())[0]["status"], "auth_success")
            client.send({"action": "subscribe", "params": params})
            self.assertEqual((yield client.next())[0]["message"], "subscribed to: " + params)
            seen = set()
            while seen != wanted:
                for message in (yield client.next()):
                    key = (message["ev"], message.get("sym") or message.get("pair"))
                    self.assertIn(key, wanted)
                    seen.add(key)

    @defer.inlineCallbacks
    def test_clients_get_going_away_on_shutdown(self):
        """Stopping the service closes clients with 1001 and upstream with a clean close."""
        from twisted.internet import reactor

        options = Options(environ={})
        options.parseOptions(["--simulate", "--listen", "tcp:0:interface=127.0.0.1"])
        tree = makeService(options, reactor)
        yield tree.startService()
        port = (yield listening_port(tree.getServiceNamed("listener"))).getHost().port
        client = yield connect(port, "/v2/iex")
        yield client.next()
        client.send({"action": "auth", "key": "k", "secret": "s"})
        yield client.next()
        simulator = tree.getServiceNamed("simulator").factory
        simulator.record = True
        yield tree.stopService()
        self.assertEqual((yield client.closed), 1001)
        [upstream] = simulator.closed
        self.assertEqual((upstream.clean, upstream.close_code), (True, 1000))


class JsonLogTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_twistd_json_lines(self):
        """twistd --logger=alpaca_proxy.logs.json_lines writes one JSON object per line."""
        twistd = SimulatedTwistd()
        yield twistd.start()
        twistd.process.signalProcess("TERM")
        yield twistd.ended
        events = twistd.events()
        self.assertTrue(any("SIMULATED MARKET" in e.get("log_format", "") for e in events))
        self.assertTrue(all("log_time" in e for e in events))


class SimulatedTwistd(ProcessProtocol):
    """``twistd -n alpaca-proxy --simulate`` with JSON log lines, as a subprocess."""

    def __init__(self):
        self.out = b""
        self.ended = defer.Deferred()
        self.listening = defer.Deferred()

    def outReceived(self, data):
        self.out += data
        if b"SIMULATED MARKET" in self.out and not self.listening.called:
            self.listening.callback(None)

    def processEnded(self, reason):
        self.ended.callback((reason.value.exitCode, reason.value.signal))

    def start(self, listen="tcp:0:interface=127.0.0.1", env=None):
        from twisted.internet import reactor

        self.process = reactor.spawnProcess(self, sys.executable, [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--logger=alpaca_proxy.logs.json_lines", "-n", "--pidfile=", "alpaca-proxy",
            "--simulate", "--listen", listen], env=dict(os.environ) if env is None else env)
        return self.listening

    def events(self):
        return [json.loads(line) for line in self.out.decode().splitlines()]


class ShutdownTests(TestCase):
    """Stopping with subscribed clients: close frames for everyone, no traceback."""

    timeout = 30

    @defer.inlineCallbacks
    def stopped_by(self, signal_name):
        from tests.support import login

        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        twistd = SimulatedTwistd()
        yield twistd.start("tcp:%d:interface=127.0.0.1" % (port,),
                           {k: v for k, v in os.environ.items() if not k.startswith("APCA_")})
        clients = []
        for path in ("/v2/iex", "/v1beta3/crypto/us"):
            client = yield login(port, path, key="PKANY", secret="any")
            client.send({"action": "subscribe", "trades": ["*"]})
            yield client.next()
            clients.append(client)
        twistd.process.signalProcess(signal_name)
        codes = yield defer.gatherResults([client.closed for client in clients])
        ended = yield twistd.ended
        return codes, ended, twistd.events()

    def assert_clean(self, codes, ended, events, expected_end):
        self.assertEqual(codes, [1001, 1001])
        self.assertEqual(ended, expected_end)
        failures = [e for e in events if e.get("log_failure") or
                    e.get("log_level", {}).get("name") in ("critical", "error")]
        self.assertEqual(failures, [])

    @defer.inlineCallbacks
    def test_sigterm_with_subscribed_clients(self):
        """SIGTERM: every client gets 1001, nothing is sent on a closing upstream, no traceback."""
        # twistd ends by re-raising SIGTERM once the reactor has stopped.
        self.assert_clean(*(yield self.stopped_by("TERM")), expected_end=(None, 15))

    @defer.inlineCallbacks
    def test_sighup_stops_cleanly(self):
        """SIGHUP does what SIGTERM does, and says so in the log."""
        codes, ended, events = yield self.stopped_by("HUP")
        self.assert_clean(codes, ended, events, expected_end=(0, None))
        self.assertTrue(any("SIGHUP" in e.get("log_format", "") for e in events))
