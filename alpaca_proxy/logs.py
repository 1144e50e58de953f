"""Logging: observers for twistd's ``--logger`` option, and summaries of repeated warnings.

twistd installs its log observer before the plugin's options are parsed, so the
format is chosen where twistd expects it::

    twistd --logger=alpaca_proxy.logs.json_lines -n alpaca-proxy

Events carry their fields (``peer``, ``path``, ``key``, ``code`` …) as JSON keys,
ready for a log shipper; secrets are never among them.
"""

import sys
from typing import Any

from twisted.logger import Logger, jsonFileLogObserver


def json_lines():
    """One JSON object per line on standard output."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


#: Longest client-supplied value written to the log (paths, origins, peers).
MAX_LOGGED_VALUE = 120


def short(value: object, limit: int = MAX_LOGGED_VALUE) -> str:
    """A client-supplied value cut to a loggable length."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "...(%d chars)" % (len(text),)


class Summarized:
    """Warnings about what clients do, one line per kind per window; repeats are counted.

    A client retrying a refused path every 10 ms must not fill the disk: the first
    event of a kind is logged at once, the others within ``window`` seconds are
    counted and reported in one line when the window closes.  Kinds are fixed
    strings chosen by the code, never client values, so their number is bounded.
    """

    def __init__(self, clock: Any, window: float = 10.0) -> None:
        self._clock = clock
        self._window = window
        self._log = Logger(namespace="alpaca_proxy.clients")
        #: kind -> [repeats, the delayed call that reports them]
        self._open: dict[str, list[Any]] = {}

    def warn(self, kind: str, format: str, **fields: Any) -> None:
        window = self._open.get(kind)
        if window is not None:
            window[0] += 1
            return
        self._log.warn(format, kind=kind, **fields)
        self._open[kind] = [0, self._clock.callLater(self._window, self._close, kind)]

    def _close(self, kind: str) -> None:
        repeats, _ = self._open.pop(kind)
        if repeats:
            self._log.warn("{repeats} more like the last '{kind}' warning in {window:.0f}s",
                           kind=kind, repeats=repeats, window=self._window)

    def stop(self) -> None:
        """Cancel the pending reports (the proxy is stopping)."""
        for _, call in self._open.values():
            if call.active():
                call.cancel()
        self._open.clear()
