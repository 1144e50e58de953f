"""Log observers for twistd's ``--logger`` option.

twistd installs its log observer before the plugin's options are parsed, so the
format is chosen where twistd expects it::

    twistd --logger=alpaca_proxy.logs.json_lines -n alpaca-proxy

Events carry their fields (``peer``, ``path``, ``key``, ``code`` …) as JSON keys,
ready for a log shipper; secrets are never among them.
"""

import sys

from twisted.logger import jsonFileLogObserver


def json_lines():
    """One JSON object per line on standard output."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
