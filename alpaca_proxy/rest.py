"""Alpaca's REST APIs through the proxy's port, within one rate budget per account.

A plain HTTP request (no websocket upgrade) on a path that is not the proxy's own
goes to Alpaca: market-data paths (``/v2/stocks/…``, ``/v1beta*/…``) to the data
REST host, every other path to the trading REST host.  Method, path, query, body
and end-to-end headers go up as sent; status, headers and body come back as
upstream sent them.  Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded.

**The proxy never retries a request**, and never sends one twice: a forwarded
request that cannot change anything (GET, HEAD) and gets no answer in time is
answered 504; any other (an order) 502 with a message that its outcome is unknown,
since alpaca-py and alpaca-trade-api retry 504 (and 429) by themselves.

Each account (key id) and upstream host shares one budget, learnt from Alpaca's
``X-Ratelimit-*`` headers (``--rest-rate`` a minute before the first answer).  When
it is spent, requests wait — round-robin between client connections, in order
within one — until the window resets, at most ``--rest-queue-timeout`` seconds;
then 429 with Alpaca's body and ``Retry-After``.  Such a request never left the
proxy, so an SDK's own retry of it is harmless.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from io import BytesIO
from typing import Any

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.logger import Logger
from twisted.web.client import (
    Agent, BrowserLikePolicyForHTTPS, FileBodyProducer, HTTPConnectionPool, readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET

from alpaca_proxy.codec import to_json
from alpaca_proxy.credentials import Credentials
from alpaca_proxy.logs import short

#: Largest request body forwarded (an order is a few hundred bytes); web.py refuses
#: bigger ones while they arrive.
MAX_BODY = 1 << 20
#: Hop-by-hop headers: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate",
                        b"proxy-authorization", b"te", b"trailer", b"transfer-encoding",
                        b"upgrade", b"host", b"content-length"})
#: Methods that cannot change anything upstream.
SAFE_METHODS = frozenset({b"GET", b"HEAD"})
#: Budgets kept at most (one per account and host; the oldest are forgotten).
MAX_BUDGETS = 256
#: Requests waiting for budget at most, over all accounts (then 429 at once).
MAX_WAITING = 1000
#: Requests on their way to Alpaca at once, over all accounts (then 429 at once): each
#: holds a connection upstream.
MAX_IN_FLIGHT = 256
#: GETs answered from the short cache (``--rest-cache-ms``), emptied by trade updates.
CACHEABLE = frozenset({"/v2/account", "/v2/clock", "/v2/positions"})
#: Cached answers kept at most.
MAX_CACHED = 256


def is_data_path(path: str) -> bool:
    """Market-data REST paths (data.alpaca.markets); everything else is trading."""
    return path.startswith(("/v2/stocks", "/v1beta1/", "/v1beta2/", "/v1beta3/"))


#: Upper bounds (seconds) of the wait-time histogram's buckets.
WAIT_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0)


class RestStats:
    """REST requests by account and status class, and how long they waited for budget."""

    def __init__(self) -> None:
        #: (key id, "2xx" …) -> requests answered
        self.requests: Counter = Counter()
        self._accounts: set[str] = set()
        #: cumulative counts per bucket of WAIT_BUCKETS, then all; and the sum of waits
        self.wait_buckets = [0] * (len(WAIT_BUCKETS) + 1)
        self.wait_sum = 0.0

    def answered(self, key: str, status: int) -> None:
        """Count an answer; key ids are the client's word, so at most MAX_BUDGETS of them
        are named (the rest count as "other": memory and /metrics labels stay bounded)."""
        account = short(key, 40) or "-"
        if (account not in self._accounts and len(self._accounts) >= MAX_BUDGETS):
            account = "other"
        self._accounts.add(account)
        self.requests[(account, "%dxx" % (status // 100,))] += 1

    def waited(self, seconds: float) -> None:
        self.wait_sum += seconds
        for index, bound in enumerate(WAIT_BUCKETS):
            if seconds <= bound:
                self.wait_buckets[index] += 1
        self.wait_buckets[-1] += 1


@define
class _Waiter:
    deferred: Deferred
    timer: Any


@define
class Budget:
    """One account's requests a window on one upstream host, and who waits for them."""

    clock: Any
    limit: int
    #: Requests still allowed before ``reset_at`` (epoch seconds).
    remaining: int = 0
    reset_at: float = 0.0
    #: connection -> its waiting requests, in order; connections served round-robin.
    _queues: "OrderedDict[Any, deque[_Waiter]]" = field(factory=OrderedDict)
    _wakeup: Any = None

    def __attrs_post_init__(self) -> None:
        self.remaining = self.limit
        self.reset_at = self.clock.seconds() + 60.0

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def acquire(self, connection: Any, timeout: float) -> Deferred:
        """Fires when a request may go up; fails with ``TimeoutError`` after ``timeout``."""
        self._refill()
        if self.remaining > 0 and not self._queues:
            self.remaining -= 1
            return succeed(None)
        deferred: Deferred = Deferred(lambda _: self._forget(connection, waiter))
        waiter = _Waiter(deferred, None)
        waiter.timer = self.clock.callLater(timeout, self._expire, connection, waiter)
        self._queues.setdefault(connection, deque()).append(waiter)
        self._schedule()
        return deferred

    def learn(self, headers: Headers) -> None:
        """Take upstream's own count from an answer's ``X-Ratelimit-*`` headers."""
        def number(name: bytes) -> float | None:
            value = headers.getRawHeaders(name)
            try:
                return float(value[0]) if value else None
            except ValueError:
                return None

        limit, remaining, reset = (number(b"x-ratelimit-limit"),
                                   number(b"x-ratelimit-remaining"),
                                   number(b"x-ratelimit-reset"))
        if limit is not None and limit > 0:
            self.limit = int(limit)
        if reset is not None and reset > self.clock.seconds():
            if reset > self.reset_at + 1:  # a new window began upstream
                self.remaining = self.limit
            self.reset_at = reset
        if remaining is not None:
            self.remaining = min(self.remaining, int(remaining))
        self._schedule()

    def retry_after(self) -> int:
        return max(1, int(self.reset_at - self.clock.seconds() + 0.999))

    def _refill(self) -> None:
        if self.clock.seconds() >= self.reset_at:
            self.remaining = self.limit
            self.reset_at = self.clock.seconds() + 60.0

    def _schedule(self) -> None:
        self._refill()
        while self.remaining > 0 and self._queues:
            connection, queue = next(iter(self._queues.items()))
            waiter = queue.popleft()
            del self._queues[connection]
            if queue:  # round-robin: this connection goes to the back
                self._queues[connection] = queue
            if waiter.timer.active():
                waiter.timer.cancel()
            self.remaining -= 1
            waiter.deferred.callback(None)
        if self._queues and (self._wakeup is None or not self._wakeup.active()):
            delay = max(0.0, self.reset_at - self.clock.seconds()) + 0.01
            self._wakeup = self.clock.callLater(delay, self._schedule)

    def _expire(self, connection: Any, waiter: _Waiter) -> None:
        self._forget(connection, waiter)
        waiter.deferred.errback(TimeoutError("rate budget spent"))

    def _forget(self, connection: Any, waiter: _Waiter) -> None:
        """A waiter gone (timed out, or its client left): out of the queue."""
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        queue = self._queues.get(connection)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._queues[connection]


class RestForwarder:
    """Forwards one HTTP request to Alpaca and its answer back (a twisted.web render)."""

    _log = Logger()

    def __init__(self, proxy: Any, reactor: Any, data_url: str | None,
                 trading_url: str | None, rate: int = 200, queue_timeout: float = 10.0,
                 timeout: float = 30.0, trust_root: Any = None, cache_ms: float = 0.0) -> None:
        self._proxy = proxy
        self._clock = proxy.clock
        self._data_url = data_url
        self._trading_url = trading_url
        self._rate = rate
        self._queue_timeout = queue_timeout
        self._timeout = timeout
        tls = BrowserLikePolicyForHTTPS(trust_root)
        # Reads reuse connections, closed after 20 s idle (before Alpaca's side would,
        # so a request rarely meets a connection the server already dropped).
        self._pool = pool = HTTPConnectionPool(reactor)
        pool.retryAutomatically = False  # never a request twice, not even a GET
        pool.cachedConnectionTimeout = 20
        self._agent = Agent(reactor, contextFactory=tls, pool=pool, connectTimeout=5)
        # Anything that can change something (an order) goes on a fresh connection: a
        # stale one would leave its outcome unknown for no reason.
        fresh = HTTPConnectionPool(reactor, persistent=False)
        fresh.retryAutomatically = False
        self._fresh_agent = Agent(reactor, contextFactory=tls, pool=fresh, connectTimeout=5)
        self._budgets: OrderedDict[tuple[str, str], Budget] = OrderedDict()
        #: (pair fingerprint, method, URL) of GETs in flight -> requests sharing the answer.
        self._inflight: dict[tuple[str, bytes, str], list[Any]] = {}
        self._cache_seconds = cache_ms / 1000.0
        #: (key id, pair fingerprint, URL) -> (fresh until, the answer)
        self._cache: OrderedDict[tuple[str, str, str], tuple[float, Any]] = OrderedDict()
        self.stats = RestStats()
        #: Requests sent to Alpaca and not answered yet.
        self.in_flight = 0

    def close(self) -> Deferred:
        """Close the kept-alive connections to Alpaca (the proxy is stopping)."""
        return self._pool.closeCachedConnections()

    def budget(self, key: str, base: str) -> Budget:
        budget = self._budgets.pop((key, base), None) or Budget(self._clock, self._rate)
        self._budgets[(key, base)] = budget
        while len(self._budgets) > MAX_BUDGETS:
            self._budgets.popitem(last=False)
        return budget

    @property
    def waiting(self) -> int:
        return sum(budget.waiting for budget in self._budgets.values())

    def forget_account(self, key: str) -> None:
        """A trade update for this account: its cached answers are stale now."""
        for entry in [entry for entry in self._cache if entry[0] == key]:
            del self._cache[entry]

    def snapshot(self) -> dict[str, Any]:
        """What the status page and /metrics show: budgets, waiting, answers by class."""
        now = self._clock.seconds()
        requests: dict[str, dict[str, int]] = {}
        for (key, status_class), count in sorted(self.stats.requests.items()):
            requests.setdefault(key, {})[status_class] = count
        return {
            "waiting": self.waiting,
            "budgets": [{"account": key, "host": host, "limit": budget.limit,
                         "remaining": max(0, budget.remaining),
                         "reset_in": round(max(0.0, budget.reset_at - now), 1),
                         "waiting": budget.waiting}
                        for (key, host), budget in self._budgets.items()],
            "requests": requests,
        }

    def render(self, request: Any) -> Any:
        arrived = self._clock.seconds()
        path = request.uri.decode("latin-1")
        base = self._data_url if is_data_path(request.path.decode("latin-1")) else self._trading_url
        if base is None:
            return self._local(request, "", 503, {"message": (
                "Alpaca's REST APIs are not simulated: run without --simulate, or give"
                " --trading-rest-url and --data-rest-url")})
        base = base.rstrip("/")
        key = (request.getHeader(b"apca-api-key-id") or b"").decode("latin-1")
        secret = (request.getHeader(b"apca-api-secret-key") or b"").decode("latin-1")
        accounts = self._proxy.pool.accounts
        if accounts is not None:
            configured = accounts.get(key)
            if configured is None or not configured.matches(Credentials(key, secret)):
                # Not an account of ours: counted under "-", never by the claimed key id.
                return self._local(request, "", 401, {"code": 40110000,
                                                       "message": "request is not authorized"})
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(body) > MAX_BODY:
            return self._local(request, key, 413, {"message": "request body over 1 MiB"})
        url = base + path
        fingerprint = Credentials(key, secret).fingerprint
        cacheable = (self._cache_seconds and request.method == b"GET"
                     and request.path.decode("latin-1") in CACHEABLE)
        if cacheable:
            cached = self._cache.get((key, fingerprint, url))
            if cached is not None and cached[0] > self._clock.seconds():
                self._deliver(request, key, cached[1])
                return NOT_DONE_YET
        # Identical GETs of one pair in flight at once go up once; all get the answer.
        same = (fingerprint, request.method, url)
        if request.method == b"GET" and same in self._inflight:
            followers = self._inflight[same]
            followers.append(request)
            request.notifyFinish().addErrback(
                lambda _: request in followers and followers.remove(request))
            return NOT_DONE_YET
        if self.waiting >= MAX_WAITING or self.in_flight >= MAX_IN_FLIGHT:
            return self._too_many(request, key, None)
        if request.method == b"GET":
            self._inflight[same] = []
        budget = self.budget(key, base)
        waited = budget.acquire(request.channel, self._queue_timeout)
        # A client that leaves while waiting frees its place (unless others share it).
        request.notifyFinish().addErrback(
            lambda _: None if self._inflight.get(same) else waited.cancel())

        def go(_: Any) -> Deferred:
            self.stats.waited(self._clock.seconds() - arrived)
            return self._forward(request, url, body, budget)

        def deliver(outcome: Any) -> None:
            if cacheable and outcome[0] == "upstream" and outcome[1] == 200:
                self._cache[(key, fingerprint, url)] = (
                    self._clock.seconds() + self._cache_seconds, outcome)
                while len(self._cache) > MAX_CACHED:
                    self._cache.popitem(last=False)
            for each in [request] + self._inflight.pop(same, []):
                self._deliver(each, key, outcome)

        def spent(failure: Any) -> Any:
            if failure.check(TimeoutError):
                return ("local", 429, {"code": 42910000, "message": "rate limit exceeded"},
                        {b"retry-after": str(budget.retry_after()).encode()})
            if not failure.check(CancelledError):
                self._log.failure("REST {path}", failure, path=short(path))
            return ("local", 500, {"message": "internal error"}, {})

        waited.addCallbacks(go, spent).addCallback(deliver)
        return NOT_DONE_YET

    def _forward(self, request: Any, url: str, body: bytes, budget: Budget) -> Deferred:
        """Send the request up once; fires with its outcome (never fails)."""
        headers = Headers()
        connection = {token.strip().lower() for value in
                      request.requestHeaders.getRawHeaders(b"connection", [])
                      for token in value.split(b",")}
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in HOP_BY_HOP and name.lower() not in connection:
                headers.setRawHeaders(name, values)
        method = request.method
        if self.in_flight >= MAX_IN_FLIGHT:  # filled up while this one waited for budget
            return succeed(("local", 429, {"code": 42910000, "message": "rate limit exceeded"},
                            {b"retry-after": b"1"}))
        self.in_flight += 1
        agent = self._agent if method in SAFE_METHODS else self._fresh_agent
        sending = agent.request(method, url.encode("latin-1"), headers,
                                FileBodyProducer(BytesIO(body)) if body else None)
        timed_out = []

        def give_up() -> None:
            timed_out.append(True)
            sending.cancel()

        timer = self._clock.callLater(self._timeout, give_up)

        def answered(response: Any) -> Deferred:
            budget.learn(response.headers)
            return readBody(response).addCallback(lambda data: (
                "upstream", response.code, response.phrase,
                list(response.headers.getAllRawHeaders()), data))

        def failed(failure: Any) -> Any:
            safe = method in SAFE_METHODS
            if timed_out:
                if safe:
                    return ("local", 504, {"message": "Alpaca did not answer within %ss"
                                                      % (self._timeout,)}, {})
                return ("local", 502, {"message": (
                    "Alpaca did not answer within %ss: the outcome of this %s is unknown;"
                    " look the order up (GET /v2/orders:by_client_order_id) before sending"
                    " it again" % (self._timeout, method.decode("latin-1")))}, {})
            if failure.check(ConnectError, DNSLookupError):
                return ("local", 502, {"message": "Alpaca unreachable (%s); the request was"
                                                  " not sent" % (failure.getErrorMessage(),)}, {})
            return ("local", 502, {"message": (
                "the connection to Alpaca failed (%s); the outcome is unknown%s"
                % (failure.getErrorMessage(), "" if safe else ": look the order up before"
                   " sending it again"))}, {})

        def stop_timer(outcome: Any) -> Any:
            self.in_flight -= 1
            if timer.active():
                timer.cancel()
            return outcome

        return sending.addCallback(answered).addErrback(failed).addBoth(stop_timer)

    def _deliver(self, request: Any, key: str, outcome: Any) -> None:
        """Write an outcome (upstream's answer, or the proxy's own) to one client."""
        if request.finished or request._disconnected:
            return
        if outcome[0] == "local":
            _, status, body, headers = outcome
            for name, value in headers.items():
                request.setHeader(name, value)
            self._local(request, key, status, body)
            return
        _, status, phrase, headers, data = outcome
        self.stats.answered(key, status)
        request.setResponseCode(status, phrase)
        for name, values in headers:
            if name.lower() not in HOP_BY_HOP:
                request.responseHeaders.setRawHeaders(name, values)
        request.write(data)
        request.finish()

    def _too_many(self, request: Any, key: str, budget: Budget | None) -> Any:
        request.setHeader(b"retry-after", str(budget.retry_after() if budget else 1).encode())
        return self._local(request, key, 429, {"code": 42910000, "message": "rate limit exceeded"})

    def _local(self, request: Any, key: str, status: int, body: dict) -> Any:
        """A local answer (never forwarded) in Alpaca's JSON error shape."""
        self.stats.answered(key, status)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.write(to_json(body))
        request.finish()
        return NOT_DONE_YET
