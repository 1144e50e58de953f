"""The twistd plugin: ``twistd -n alpaca-proxy``.

Kept lazy, so that scanning plugins does not import the application.
"""

from twisted.application.service import ServiceMaker

alpaca_proxy = ServiceMaker(
    "alpaca-proxy",
    "alpaca_proxy.service",
    "Share one Alpaca market-data websocket between many local clients",
    "alpaca-proxy",
)
