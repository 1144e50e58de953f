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
