"""Memory per idle client: N authenticated websocket clients that subscribe nothing.

Run by hand:  python bench/idle.py --clients 5000

Starts the proxy on the simulator, measures its RSS, connects N clients (one
process, several event loops' worth of sockets), waits until all are
authenticated, measures again, and prints KiB per client.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor

from fanout import free_port, memory_kib  # the scripts' folder is on sys.path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=5000)
    opts = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", "alpaca-proxy", "--simulate", "--max-clients", "0", "--listen",
         "tcp:%d:interface=127.0.0.1:backlog=1024" % port],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    before = memory_kib(proxy.pid)
    authenticated = []

    class Idle(WebSocketClientProtocol):
        def onOpen(self):
            self.sendMessage(b'{"action":"auth","key":"PKIDLE","secret":"idle"}', False)

        def onMessage(self, payload, isBinary):
            if b"authenticated" in payload:
                authenticated.append(self)
                if len(authenticated) == opts.clients:
                    reactor.callLater(3, measure)

    factory = WebSocketClientFactory("ws://127.0.0.1:%d/v2/iex" % port)
    factory.protocol = Idle

    def connect(remaining: int) -> None:
        for _ in range(min(200, remaining)):
            reactor.connectTCP("127.0.0.1", port, factory)
        if remaining > 200:
            reactor.callLater(0.05, connect, remaining - 200)

    def measure() -> None:
        after = memory_kib(proxy.pid)
        print(json.dumps({"clients": opts.clients, "rss_before_kib": before,
                          "rss_after_kib": after,
                          "kib_per_client": round((after - before) / opts.clients, 2)}))
        proxy.terminate()
        reactor.stop()

    connect(opts.clients)
    reactor.callLater(120, lambda: (print("timed out: %d authenticated" % len(authenticated)),
                                    proxy.terminate(), reactor.stop()))
    reactor.run()


if __name__ == "__main__":
    main()
