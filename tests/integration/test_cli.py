"""The ``alpaca-proxy`` command and twistd plugin as a newcomer meets them: where to
connect, and one line (exit 1) for every start-up mistake."""

import os
import shutil
import socket
import subprocess
import sys

from twisted.trial.unittest import SkipTest, TestCase

from alpaca_proxy import __version__

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
          "--pidfile=", "alpaca-proxy"]


def command():
    found = shutil.which("alpaca-proxy") or os.path.join(os.path.dirname(sys.executable),
                                                          "alpaca-proxy")
    if not os.path.exists(found):
        raise SkipTest("the alpaca-proxy command is not installed")
    return [found]


def run(argv, env=None, timeout=30):
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("APCA_", "ALPACA_PROXY"))}
    environ.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=timeout)


class StartupErrorTests(TestCase):
    def assert_one_line(self, result, *words):
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        for word in words:
            self.assertIn(word, lines[0])

    def test_version(self):
        """--version names alpaca-proxy's version, for the command and the plugin."""
        for argv in (command() + ["--version"], TWISTD + ["--version"]):
            result = run(argv)
            self.assertEqual((result.returncode, result.stdout.strip()),
                             (0, "alpaca-proxy %s" % (__version__,)), result.stderr)

    def test_bad_values_name_their_option_or_variable(self):
        """A bad number names --sim-rate; from the environment, the variable."""
        self.assert_one_line(run(command() + ["--sim-rate", "abc"]), "--sim-rate", "abc")
        self.assert_one_line(run(command(), {"ALPACA_PROXY_SIM_RATE": "abc"}),
                             "ALPACA_PROXY_SIM_RATE")
        self.assert_one_line(run(TWISTD + ["--listen", "tcp:70000"]), "out of range")

    def test_port_in_use(self):
        """A port already taken: one line naming it, for the command and the plugin."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            listen = "tcp:%d:interface=127.0.0.1" % (port,)
            message = "cannot listen on 127.0.0.1:%d: Address already in use" % (port,)
            self.assert_one_line(run(command() + ["--simulate", "--listen", listen]), message)
            # twistd logs what reaches stderr, one log line, no traceback.
            result = run(TWISTD + ["--simulate", "--listen", listen])
            self.assertEqual(result.returncode, 1)
            self.assertIn(message, result.stdout + result.stderr)
            self.assertNotIn("Traceback", result.stdout + result.stderr)

    def test_recording_mistakes(self):
        """--record and --replay mistakes: one line each, naming what is wrong."""
        missing = os.path.join(self.mktemp(), "nothing-here")
        self.assert_one_line(run(command() + ["--replay", missing]), "--replay",
                             "no such file or directory")
        empty = self.mktemp()
        os.makedirs(empty)
        self.assert_one_line(run(command() + ["--replay", empty]), "no alpaca-proxy recording")
        self.assert_one_line(run(command() + ["--replay", empty, "--simulate"]), "give one")
        self.assert_one_line(run(command() + ["--replay-speed", "3"]), "--replay-speed",
                             "needs --replay")
        self.assert_one_line(run(command(), {"ALPACA_PROXY_REPLAY_LOOP": "true"}),
                             "ALPACA_PROXY_REPLAY_LOOP", "needs --replay")
        self.assert_one_line(run(command() + ["--record", empty, "--replay", empty]),
                             "give one")
        self.assert_one_line(run(command() + ["--record-trading"]), "needs --record")
        self.assert_one_line(run(command() + ["--record-keep-days", "3"]), "needs --record")
        blocked = os.path.join(empty, "a-file")
        open(blocked, "w").close()
        self.assert_one_line(run(command() + ["--record", os.path.join(blocked, "sub")]),
                             "--record", "cannot create")

    def test_bus_mistakes(self):
        """--bus: another reactor, no accounts, a bad URL: one line each, saying what to do."""
        keys = {"APCA_API_KEY_ID": "PK1", "APCA_API_SECRET_KEY": "s"}
        result = run(TWISTD + ["--bus", "nats://127.0.0.1:1"], keys)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("twistd -r asyncio", result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assert_one_line(run(command() + ["--bus", "nats://127.0.0.1:1"]),
                             "needs configured accounts")
        self.assert_one_line(run(command() + ["--bus", "redis://u:hunter2@x"], keys),
                             "not a nats:// or tls:// URL")
        self.assertNotIn("hunter2", run(command() + ["--bus", "redis://u:hunter2@x"],
                                        keys).stderr)
        self.assert_one_line(run(command() + ["--node-name", "a"]), "needs --bus")

    def test_permission_denied(self):
        """A privileged port without the privilege: one line saying so."""
        if os.geteuid() == 0:
            raise SkipTest("root may bind any port")
        self.assert_one_line(run(command() + ["--listen", "tcp:80:interface=127.0.0.1"]),
                             "Permission denied")


class StartupLinesTests(TestCase):
    def test_command_says_where_to_connect(self):
        """alpaca-proxy --simulate logs to stdout the page and a URL per stream, writes no
        pid file, and stops on SIGTERM."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        folder = self.mktemp()
        os.makedirs(folder)
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("APCA_", "ALPACA_PROXY"))}
        process = subprocess.Popen(command() + ["--simulate", "--listen",
                                                "tcp:%d:interface=127.0.0.1" % (port,)],
                                   cwd=folder, env=environ, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        out = ""
        for line in process.stdout:
            out += line
            if "trading " in line:
                break
        process.terminate()
        out += process.communicate(timeout=20)[0]
        base = "127.0.0.1:%d" % (port,)
        for expected in ("SIMULATED MARKET", "http://%s/" % base, "ws://%s/v2/iex" % base,
                         "ws://%s/v1beta3/crypto/us" % base, "ws://%s/v1beta1/news" % base,
                         "ws://%s/v1beta1/opra" % base, "ws://%s/stream" % base):
            self.assertIn(expected, out)
        self.assertNotIn("Starting factory", out)
        self.assertEqual(os.listdir(folder), [])
