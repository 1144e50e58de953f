"""A Polygon/Massive WebSocketClient through the proxy; prints what it parsed as JSON lines.

usage: polygon_client.py PACKAGE HOST:PORT MARKET KEY SUBSCRIPTIONS COUNT
PACKAGE: massive or polygon (the polygon-api-client package).  SUBSCRIPTIONS is
comma-joined (T.MSFT,Q.MSFT).  Exits after COUNT messages, or with status 3 after 60 s.
"""

import json
import os
import sys
import threading

package, feed, market, key, subscriptions, count = sys.argv[1:7]
if package == "massive":
    from massive import WebSocketClient
else:
    from polygon import WebSocketClient

threading.Timer(60.0, lambda: os._exit(3)).start()
received = []


def handle(messages):
    for message in messages:
        symbol = next((getattr(message, name) for name in ("symbol", "pair", "ticker")
                       if getattr(message, name, None) is not None), None)
        value = next((getattr(message, name) for name in ("price", "bid_price", "value", "close")
                      if getattr(message, name, None) is not None), None)
        line = {"kind": type(message).__name__, "symbol": symbol, "value": value,
                "time": message.timestamp if hasattr(message, "timestamp") else None}
        print(json.dumps(line), flush=True)
        received.append(line)
        if len(received) >= int(count):
            os._exit(0)


client = WebSocketClient(api_key=key, feed=feed, market=market, secure=False,
                         subscriptions=subscriptions.split(","))
client.run(handle)
