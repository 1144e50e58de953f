"""The status page as a person sees it: headless Chromium against the simulated proxy."""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from alpaca_proxy.options import Options
from alpaca_proxy.service import makeService
from tests.support import connect, listening_port


@defer.inlineCallbacks
def get_page(url):
    """A page's body over HTTP (twisted.web's Agent)."""
    from twisted.web.client import Agent, readBody

    response = yield Agent(reactor).request(b"GET", url.encode())
    return (yield readBody(response))


def screenshot_path() -> Path:
    """Where the screenshot is kept, an artifact of the run (in trial's temp folder)."""
    return Path(os.environ.get("ALPACA_PROXY_SCREENSHOT", "status-page.png")).resolve()


def chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            raise AssertionError("chromium is missing on the CI machine (.ci/run installs it)")
        raise SkipTest("chromium is not installed (apt-get install chromium)")
    return found


class StatusPageBrowserTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def run_chromium(self, *arguments):
        profile = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, profile, True)
        out, err, code = yield getProcessOutputAndValue(chromium(), [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--user-data-dir=" + profile, "--window-size=1100,900",
            "--virtual-time-budget=7000", *arguments], env=dict(os.environ), reactor=reactor)
        return out, err, code

    @defer.inlineCallbacks
    def test_page_shows_both_clients_and_a_live_rate(self):
        """Two clients on the simulator: the page, after updating itself, shows both and a rate."""
        chromium()
        options = Options(environ={})
        options.parseOptions(["--simulate", "--sim-rate", "20",
                              "--listen", "tcp:0:interface=127.0.0.1"])
        tree = makeService(options, reactor)
        yield tree.startService()
        self.addCleanup(tree.stopService)
        port = (yield listening_port(tree.getServiceNamed("listener"))).getHost().port
        clients = []
        for path, symbols in [("/v2/iex", ["AAPL", "MSFT"]), ("/v1beta3/crypto/us", ["BTC/USD"])]:
            client = yield connect(port, path, msgpack_encoding=path.startswith("/v1"))
            self.addCleanup(lambda c=client: c.sendClose() or c.closed)
            yield client.next()
            client.send({"action": "auth", "key": "PKDEMO", "secret": "demo-secret"})
            yield client.next()
            client.send({"action": "subscribe", "trades": symbols, "quotes": symbols})
            yield client.next()
            clients.append(client)
        # Let a few seconds of simulated market flow before the page looks.
        for client in clients:
            received = 0
            while received < 60:
                received += len((yield client.next()))
        url = "http://127.0.0.1:%d/" % (port,)
        out, err, code = yield self.run_chromium("--dump-dom", url)
        self.assertEqual(code, 0, err.decode()[-2000:])
        dom = out.decode()
        self.assertEqual(len(re.findall(r'<tr class="client"', dom)), 2, dom[-3000:])
        self.assertIn("/v1beta3/crypto/us", dom)
        updates = int(re.search(r'data-updates="(\d+)"', dom).group(1))
        self.assertGreaterEqual(updates, 2, "the page did not update itself")
        rate = float(re.search(r'<span id="rate">([0-9.]+)</span>', dom).group(1))
        self.assertGreater(rate, 0)
        self.assertIn(">healthy<", dom)
        self.assertIn('<span id="simulated" class="pill warn">SIMULATED', dom)
        self.assertNotIn("demo-secret", dom)
        # One client's subscriptions, on demand (a click, or #client=ID in the address).
        status = json.loads((yield get_page(url + "status.json")))
        stocks = next(c for c in status["clients"] if c["path"] == "/v2/iex")
        out, err, code = yield self.run_chromium("--dump-dom",
                                                 url + "#client=%d" % (stocks["id"],))
        self.assertIn("trades: AAPL, MSFT", out.decode())
        screenshot = screenshot_path()
        if screenshot.exists():
            screenshot.unlink()
        out, err, code = yield self.run_chromium("--screenshot=%s" % (screenshot,), url)
        self.assertEqual(code, 0, err.decode()[-2000:])
        self.assertGreater(screenshot.stat().st_size, 10_000)

    @defer.inlineCallbacks
    def test_page_says_replay_and_where(self):
        """Under --replay the page shows REPLAY and the position in the recording."""
        import msgpack

        from alpaca_proxy.recording import fileformat

        chromium()
        folder = self.mktemp()
        os.makedirs(folder)
        stamp = msgpack.Timestamp(1714658587, 0)
        body = fileformat.pack_metadata(fileformat.metadata("stocks", "/v2/iex", 0, "test"))
        for n in range(3):
            frame = [{"T": "t", "S": "AAPL", "i": n, "x": "V", "p": 100.0 + n, "s": 1,
                      "c": ["@"], "z": "C", "t": stamp}]
            body += fileformat.pack_frame(1714658587_000_000_000 + n * 1000, True,
                                          msgpack.packb(frame, datetime=False))
        with open(os.path.join(folder, "alpaca_v2_iex.2024-05-02.zst"), "wb") as out:
            out.write(fileformat.encode_block(body, fileformat.new_compressor()))
        options = Options(environ={})
        options.parseOptions(["--replay", folder, "--replay-speed", "0",
                              "--listen", "tcp:0:interface=127.0.0.1"])
        tree = makeService(options, reactor)
        yield tree.startService()
        self.addCleanup(tree.stopService)
        port = (yield listening_port(tree.getServiceNamed("listener"))).getHost().port
        client = yield connect(port, "/v2/iex")
        self.addCleanup(lambda: client.sendClose() or client.closed)
        yield client.next()
        client.send({"action": "auth", "key": "PKDEMO", "secret": "demo-secret"})
        yield client.next()
        client.send({"action": "subscribe", "trades": ["AAPL"]})
        yield client.next()
        received = []
        while len(received) < 3:
            received += (yield client.next())
        self.assertEqual([m["p"] for m in received], [100.0, 101.0, 102.0])
        out, err, code = yield self.run_chromium("--dump-dom", "http://127.0.0.1:%d/" % port)
        self.assertEqual(code, 0, err.decode()[-2000:])
        self.assertIn('<span id="replay" class="pill warn" title="recording %s: /v2/iex">'
                      'REPLAY 2024-05-02T14:03:07.000002Z' % (folder,), out.decode())
