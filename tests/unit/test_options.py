"""Options, the twistd plugin and the service tree."""

import os
import re
import subprocess
import sys
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactor
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy.credentials import Credentials
from alpaca_proxy.options import Options
from alpaca_proxy.service import makeService

DEFAULTS = {
    "listen": "tcp:8765:interface=127.0.0.1",
    "data-url": "wss://stream.data.alpaca.markets",
    "trading-url": "wss://paper-api.alpaca.markets",
    "feed": "iex",
    "linger": 30.0,
    "auth-timeout": 10.0,
    "sim-rate": 2.0,
    "simulate": 0,
    "credentials-file": None,
    "ca-bundle": None,
    "allow-origin": "",
    "health-grace": 60.0,
    "origins": frozenset(),
    "trust-root": None,
    "client-buffer": 8 << 20,
    "max-clients": 1000,
    "max-clients-per-address": 256,
    "max-upstreams": 64,
    "client-ping-interval": 30.0,
    "client-ping-timeout": 30.0,
    "allow-host": "",
    "hosts": frozenset(),
    "access-log": 0,
    "data-rest-url": "https://data.alpaca.markets",
    "trading-rest-url": "https://paper-api.alpaca.markets",
    "rest-rate": 200,
    "rest-queue-timeout": 10.0,
    "rest-timeout": 30.0,
    "rest-explicit": False,
    "rest-cache-ms": 0.0,
    "max-symbols": 20000,
    "max-request-symbols": 10000,
    "max-rate": 50.0,
    "ping-interval": 10.0,
    "ping-timeout": 180.0,
    "silence-timeout": 0.0,
    "accounts": None,
    "use-polygon": 0,
    "polygon-url": "wss://socket.massive.com",
    "polygon-accounts": None,
    "record": None,
    "record-trading": 0,
    "record-keep-days": 0,
    "replay": None,
    "replay-catalog": None,
    "replay-speed": 1.0,
    "replay-from": None,
    "replay-to": None,
    "replay-loop": 0,
    "replay-shift": 0,
    "bus": None,
    "bus-servers": None,
    "bus-creds": None,
    "node-name": None,
    "lease-ttl": 5.0,
    "bus-replicas": 1,
    "bus-symbols": 0,
}


def parse(argv, environ=None):
    options = Options(environ=environ or {})
    options.parseOptions(argv)
    return dict(options)


class OptionsTests(SynchronousTestCase):
    def test_defaults(self):
        """With nothing set, every option has its documented default."""
        self.assertEqual(parse([]), DEFAULTS)

    def test_environment_then_command_line(self):
        """Environment variables set options; the command line wins over them."""
        environ = {
            "ALPACA_PROXY_LISTEN": "tcp:9000", "ALPACA_PROXY_DATA_URL": "ws://127.0.0.1:1/",
            "ALPACA_PROXY_LINGER": "5", "ALPACA_PROXY_SIMULATE": "true", "IS_PRO": "true",
            "APCA_API_KEY_ID": "PK1", "APCA_API_SECRET_KEY": "sec",
            "APCA_API_STREAM_URL": "ws://127.0.0.1:8765",
        }
        self.assertEqual(parse(["--linger", "7"], environ), dict(
            DEFAULTS, listen="tcp:9000", **{"data-url": "ws://127.0.0.1:1"}, linger=7.0,
            simulate=1, feed="sip", accounts={"PK1": Credentials("PK1", "sec")},
            hosts=None))  # listening on every interface: no Host rule

    def test_replay_settings(self):
        """--replay opens the recording; the window is read as RFC 3339 with an offset."""
        from alpaca_proxy.recording import fileformat

        folder = self.mktemp()
        os.makedirs(folder)
        with open(os.path.join(folder, "alpaca_v2_iex.2026-12-01.zst"), "wb") as out:
            meta = fileformat.metadata("stocks", "/v2/iex", 0, "test")
            out.write(fileformat.encode_block(fileformat.pack_metadata(meta),
                                              fileformat.new_compressor()))
        parsed = parse(["--replay", folder, "--replay-speed", "0", "--replay-from",
                        "2026-12-01T14:30:00Z", "--replay-to", "2026-12-01T10:00:00.5-05:00"],
                       {"ALPACA_PROXY_REPLAY_SHIFT": "yes"})
        self.assertEqual(parsed["replay-catalog"].endpoints, {"/v2/iex"})
        self.assertEqual(parsed["replay-speed"], 0.0)
        self.assertEqual(parsed["replay-from"], 1796135400 * 10**9)
        self.assertEqual(parsed["replay-to"], 1796137200 * 10**9 + 500_000_000)
        self.assertEqual(parsed["replay-shift"], 1)
        for argv, words in (
                (["--replay-from", "yesterday"], "not an RFC 3339 time"),
                (["--replay-from", "2026-12-01T14:30:00"], "with an offset"),
                (["--replay-from", "2026-12-01T15:00:00Z", "--replay-to",
                  "2026-12-01T14:00:00Z"], "must come after"),
                (["--replay-speed", "-1"], "at least 0")):
            options = Options(environ={})
            with self.assertRaises(SystemExit) as raised:
                options.parseOptions(["--replay", folder] + argv)
            self.assertIn(words, str(raised.exception))

    def test_polygon_settings(self):
        """USE_POLYGON selects Polygon at /; cluster names expand; keys become accounts."""
        parsed = parse(["--polygon-url", "delayed"], {
            "USE_POLYGON": "true", "POLYGON_API_KEY": "poly-key", "MASSIVE_API_KEY": "massive-key"})
        self.assertEqual(parsed["use-polygon"], 1)
        self.assertEqual(parsed["polygon-url"], "wss://delayed.massive.com")
        accounts = parsed["polygon-accounts"]
        self.assertEqual(sorted(c.secret for c in accounts.values()),
                         ["massive-key", "poly-key"])
        for key, credentials in accounts.items():
            self.assertEqual(credentials.key, key)
            self.assertNotIn(credentials.secret, key)  # the public half is a fingerprint
        self.assertEqual(parse([], {"ALPACA_PROXY_POLYGON_URL": "ws://127.0.0.1:9/"})[
            "polygon-url"], "ws://127.0.0.1:9")
        self.assertEqual(parse(["--use-polygon"])["use-polygon"], 1)
        self.assertEqual(parse([], {"USE_POLYGON": "false"})["use-polygon"], 0)
        with self.assertRaises(SystemExit):
            parse(["--polygon-url", "socket.massive.com"])

    def test_feed_variable_beats_is_pro(self):
        """An explicit feed is not overridden by IS_PRO."""
        self.assertEqual(parse([], {"IS_PRO": "true", "ALPACA_PROXY_FEED": "delayed_sip"})["feed"],
                         "delayed_sip")

    def test_credentials_file(self):
        """A credentials file adds accounts; a malformed line is named, never echoed."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# accounts\nPKA:secret-a\n\nPKB : secret-b\n")
        parsed = parse(["--credentials-file", path], {"APCA_API_KEY_ID": "PKC",
                                                      "APCA_API_SECRET_KEY": "secret-c"})
        self.assertEqual(parsed["accounts"], {
            "PKA": Credentials("PKA", "secret-a"), "PKB": Credentials("PKB", "secret-b"),
            "PKC": Credentials("PKC", "secret-c")})
        with open(path, "w") as f:
            f.write("PKA secret-a-leaky\n")
        with self.assertRaises(SystemExit) as raised:
            parse(["--credentials-file", path])
        self.assertIn("line 1", str(raised.exception.code))
        self.assertNotIn("leaky", str(raised.exception.code))

    def test_bad_values_exit_with_one_line(self):
        """Bad values end with a one-line message and a non-zero exit."""
        for argv, words in [
            (["--data-url", "http://example.com"], "ws:// or wss://"),
            (["--listen", "tcp:notaport"], "--listen"),
            (["--linger", "-1"], "--linger"),
            (["--feed", "../x"], "--feed"),
            (["--nonsense"], "nonsense"),
        ]:
            with self.assertRaises(SystemExit) as raised:
                parse(argv)
            message = str(raised.exception.code)
            self.assertIn(words, message)
            self.assertEqual(message.count("\n"), 0)


ROOT = Path(__file__).parent.parent.parent


class ReadmeTests(SynchronousTestCase):
    def test_every_option_is_documented(self):
        """Every option, and the variable that sets it, is in docs/operations.md's table."""
        from alpaca_proxy.options import ENVIRONMENT

        reference = (ROOT / "docs" / "operations.md").read_text()
        names = [p[0] for p in Options.optParameters] + [f[0] for f in Options.optFlags]
        for name in names:
            self.assertIn("`--%s`" % (name,), reference)
        for variable in ENVIRONMENT.values():
            self.assertIn("`%s`" % (variable,), reference)

    def test_readme_is_a_newcomers_path(self):
        """The README starts with the screenshot, then installs and runs the simulated
        proxy with its first command; its links lead to files that exist, none outside
        the repository; the test command sits under Development."""
        readme = (ROOT / "README.md").read_text()
        first_command = re.search(r"```sh\n(.*?)\n", readme).group(1)
        self.assertEqual(first_command, "pip install . && alpaca-proxy --simulate")
        self.assertLess(readme.index("docs/status-page.png"), readme.index(first_command))
        for link in re.findall(r"\]\(([^)#]+)\)", readme):
            if "://" not in link:
                self.assertTrue((ROOT / link).exists(), link)
        self.assertNotIn("../", readme)
        self.assertGreater(readme.index("<!-- test-command"), readme.index("## Development"))
        self.assertIn("Python 3.11", readme)
        self.assertIn("Ctrl-C", readme)


class PluginTests(SynchronousTestCase):
    def test_plugin_listed(self):
        """twistd finds the alpaca-proxy plugin."""
        import twisted.plugins

        names = [p.tapname for p in getPlugins(IServiceMaker, twisted.plugins)]
        self.assertIn("alpaca-proxy", names)

    def test_service_tree(self):
        """The tree holds the simulator (with --simulate), the upstream pool, the listener and
        the SIGHUP handler."""
        options = Options(environ={})
        options.parseOptions(["--simulate", "--listen", "tcp:0"])
        tree = makeService(options, reactor=MemoryReactor())
        self.assertEqual([s.name for s in tree], ["simulator", "upstreams", "listener", "hangup"])
        options = Options(environ={})
        options.parseOptions([])
        self.assertEqual([s.name for s in makeService(options, MemoryReactor())],
                         ["upstreams", "listener", "hangup"])

    def test_no_nats_without_bus(self):
        """Without --bus the service is built without importing nats or the asyncio
        reactor (a fresh interpreter, as twistd starts)."""
        code = ("import sys\n"
                "from twisted.internet.testing import MemoryReactor\n"
                "from alpaca_proxy.options import Options\n"
                "from alpaca_proxy.service import makeService\n"
                "options = Options(environ={}); options.parseOptions([])\n"
                "makeService(options, MemoryReactor())\n"
                "print(sorted(m for m in sys.modules if m == 'nats' or m.startswith('nats.')"
                " or m == 'twisted.internet.asyncioreactor'))\n")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "[]")

    def test_twistd_help_lists_every_option(self):
        """``twistd alpaca-proxy --help`` works and names every option."""
        result = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "alpaca-proxy", "--help"],
            capture_output=True, text=True, env=dict(os.environ, APCA_API_SECRET_KEY="x"),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        for name in ["--listen", "--data-url", "--trading-url", "--feed", "--simulate",
                     "--linger", "--auth-timeout"]:
            self.assertIn(name, result.stdout)
