"""The ``alpaca-proxy`` command: the twistd plugin's options and service, without twistd.

Logs to standard output, writes no pid file, and turns the usual start-up failures
(a port in use, no permission to bind it, a bad option) into one line on standard
error and exit status 1.  SIGINT, SIGTERM and SIGHUP stop it cleanly.
"""

from __future__ import annotations

import sys
from typing import Sequence

from twisted.logger import globalLogBeginner, textFileLogObserver


def main(argv: Sequence[str] | None = None) -> None:
    from alpaca_proxy.options import Options

    options = Options()
    options.parseOptions(list(sys.argv[1:] if argv is None else argv))  # SystemExit: one line
    if options["bus-servers"]:
        # nats-py runs on asyncio: one loop for both.  Installed before anything
        # imports the reactor (the service's modules do).
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import reactor

    from alpaca_proxy.service import makeService

    service = makeService(options, reactor)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)],
                                     redirectStandardIO=False)
    service.startService()  # a port that cannot be bound: SystemExit, one line
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
