// The official JS SDK's stock stream through the proxy; prints what it parsed as JSON lines.
// usage: node stock_client.js DATA_STREAM_URL KEY SECRET SYMBOL COUNT
// The SDK forces wss:// for stocks, so the proxy must listen with TLS; the test gives
// node its throwaway CA in NODE_EXTRA_CA_CERTS.
const Alpaca = require("@alpacahq/alpaca-trade-api");

const [url, keyId, secretKey, symbol, countText] = process.argv.slice(2);
const report = require("./report")(parseInt(countText, 10));
const alpaca = new Alpaca({ keyId, secretKey, paper: true, feed: "iex", dataStreamUrl: url });
const stream = alpaca.data_stream_v2;
stream.onConnect(() => {
  stream.subscribeForTrades([symbol]);
  stream.subscribeForQuotes([symbol]);
  stream.subscribeForBars([symbol]);
});
stream.onStockTrade((t) => report("trade", t.Symbol, t.Price, t.Timestamp));
stream.onStockQuote((q) => report("quote", q.Symbol, q.BidPrice, q.Timestamp));
stream.onStockBar((b) => report("bar", b.Symbol, b.ClosePrice, b.Timestamp));
stream.onError((error) => console.error("stream error:", error));
stream.connect();
