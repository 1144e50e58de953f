// The JS SDK 3.x's REST client with baseUrl at the proxy; prints what it got as JSON.
// usage: node rest_client.js BASE_URL KEY SECRET
const Alpaca = require("@alpacahq/alpaca-trade-api");

const [baseUrl, keyId, secretKey] = process.argv.slice(2);
setTimeout(() => process.exit(3), 30000);
const alpaca = new Alpaca({ keyId, secretKey, paper: true, baseUrl });
Promise.all([alpaca.getAccount(), alpaca.getClock()])
  .then(([account, clock]) => {
    console.log(JSON.stringify({ status: account.status, is_open: clock.is_open }));
    process.exit(0);
  })
  .catch((error) => {
    console.error(String(error));
    process.exit(1);
  });
