// The official JS SDK 4.x's stock stream through the proxy; prints what it parsed as JSON lines.
// usage: node stock_client_v4.js STREAM_URL KEY SECRET SYMBOL COUNT
// 4.x takes a per-stream `url` and plain ws:// works: no TLS listener needed.
const { Alpaca } = require("@alpacahq/alpaca-trade-api");

const [url, keyId, secret, symbol, countText] = process.argv.slice(2);
const report = require("./report")(parseInt(countText, 10));
const alpaca = new Alpaca({ keyId, secret, paper: true });
const stream = alpaca.marketData.stockStream({ feed: "iex", url });
stream.onConnect(() => {
  stream.subscribeForTrades([symbol]);
  stream.subscribeForQuotes([symbol]);
  stream.subscribeForBars([symbol]);
});
stream.onTrade((t) => report("trade", t.symbol, t.price, t.timestamp));
stream.onQuote((q) => report("quote", q.symbol, q.bidPrice, q.timestamp));
stream.onBar((b) => report("bar", b.symbol, b.close, b.timestamp));
stream.connect();
