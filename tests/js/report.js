// What the JS client scripts share: print each parsed message as a JSON line, exit after
// COUNT of them (or with status 3 after 60 s).
module.exports = function reporter(count) {
  let received = 0;
  setTimeout(() => process.exit(3), 60000);
  return function report(kind, symbol, value, time) {
    received += 1;
    const moment = time instanceof Date ? time.toISOString() : String(time);
    console.log(JSON.stringify({ kind, symbol, value, time: moment }));
    if (received >= count) process.exit(0);
  };
};
