"""alpaca-proxy: one upstream market-data websocket, many local clients."""

__version__ = "0.1.0"
