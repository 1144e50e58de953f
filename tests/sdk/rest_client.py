"""An SDK's REST client through the proxy; prints each call's outcome as a JSON line.

usage: rest_client.py SDK BASE_URL KEY SECRET SCENARIO
SDK: alpaca-py, or alpaca-trade-api (3.2, or 1.5 from its own virtualenv).
SCENARIO: "calls" (the calls pylivetrader's backend and a typical algo make), or
"order" (one order, whatever happens to it).
"""

import json
import sys

sdk, base, key, secret, scenario = sys.argv[1:6]


def report(call, function):
    try:
        value = function()
        print(json.dumps({"call": call, "ok": True, "value": summary(value)}), flush=True)
    except Exception as problem:  # the SDK's own error type: what the caller would see
        print(json.dumps({"call": call, "ok": False, "error": str(problem)[:300],
                          "status": getattr(problem, "status_code", None)}), flush=True)


def summary(value):
    if isinstance(value, list):
        return [summary(v) for v in value]
    for name in ("symbol", "status", "id"):
        found = getattr(value, name, None)
        if found is not None:
            return str(found)
    if isinstance(value, dict):
        return sorted(value)
    return str(value)[:80]


if sdk == "alpaca-py":
    from alpaca.data.historical import StockHistoricalDataClient
    from alpaca.data.requests import StockBarsRequest
    from alpaca.data.timeframe import TimeFrame
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import MarketOrderRequest

    trading = TradingClient(key, secret, paper=True, url_override=base)
    order = MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                               time_in_force=TimeInForce.DAY, client_order_id="algo-py-1")
    if scenario == "order":
        report("submit_order", lambda: trading.submit_order(order))
        sys.exit(0)
    data = StockHistoricalDataClient(key, secret, url_override=base)
    report("get_account", trading.get_account)
    report("get_clock", trading.get_clock)
    report("get_all_assets", trading.get_all_assets)
    report("submit_order", lambda: trading.submit_order(order))
    report("get_orders", trading.get_orders)
    report("get_order_by_client_id", lambda: trading.get_order_by_client_id("algo-py-1"))
    report("get_all_positions", trading.get_all_positions)
    report("get_stock_bars", lambda: data.get_stock_bars(StockBarsRequest(
        symbol_or_symbols="AAPL", timeframe=TimeFrame.Minute)).data["AAPL"][0].close)
else:
    from alpaca_trade_api.rest import REST

    api = REST(key, secret, base_url=base)
    if scenario == "order":
        report("submit_order", lambda: api.submit_order(
            "AAPL", 1, "buy", "market", "day", client_order_id="algo-ata-1"))
        sys.exit(0)
    report("list_assets", lambda: api.list_assets(status="active"))
    report("get_account", api.get_account)
    report("get_clock", api.get_clock)
    report("list_orders", api.list_orders)
    report("list_positions", api.list_positions)
    report("submit_order", lambda: api.submit_order("AAPL", 1, "buy", "market", "day",
                                                    client_order_id="algo-ata-1"))
    report("get_order_by_client_order_id",
           lambda: api.get_order_by_client_order_id("algo-ata-1"))
    report("cancel_order", lambda: api.cancel_order("00000000-0000-4000-8000-000000001001"))
