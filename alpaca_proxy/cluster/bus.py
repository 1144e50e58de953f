"""The NATS connection (nats-py on Twisted's asyncio reactor), as Deferreds.

The only module that imports nats.  It keeps one connection to the cluster
(reconnecting for ever), two JetStream key-value buckets — leases, whose keys
expire ``lease_ttl`` seconds after their last write, and the node registry —
and offers what the clustered links need: lease create/renew/release,
publish, subscribe, request/reply.  Listeners hear when the connection goes
and comes back.  Pings every second (two missed: gone), so a node cut off from
the bus knows within about three seconds, before its lease can pass.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import Any, Awaitable, Callable

import nats
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from alpaca_proxy import codec
from alpaca_proxy.cluster import LeaseTaken, subjects

#: How long one attempt to reach the bus may take, and the wait between attempts.
CONNECT_TIMEOUT = 2
RETRY_WAIT = 1


def default_node_name() -> str:
    return "%s:%d" % (socket.gethostname(), os.getpid())


def _later(coroutine: Awaitable[Any]) -> Deferred:
    return Deferred.fromFuture(asyncio.ensure_future(coroutine))


def _eagerly(coroutine: Any) -> None:
    """Run a coroutine now, as far as it goes without waiting; the rest as a task.

    nats-py's ``publish`` only appends to its buffer and wakes its flusher, without
    waiting, unless the buffer is full: one publish per message (``--bus-symbols``)
    must not cost an asyncio task each.
    """
    try:
        waiting = coroutine.send(None)
    except StopIteration:
        return
    except Exception:
        return  # a closed or draining connection: the frame is dropped, as offline
    asyncio.ensure_future(_resume(coroutine, waiting))


async def _resume(coroutine: Any, waiting: Any) -> None:
    """Drive a coroutine that stopped at ``waiting`` (a future) to its end."""
    while True:
        try:
            value = await waiting
        except BaseException as problem:  # passed into the coroutine, as a task would
            try:
                waiting = coroutine.throw(problem)
            except (StopIteration, Exception):
                return
            continue
        try:
            waiting = coroutine.send(value)
        except (StopIteration, Exception):
            return


class Bus(Service):
    """One node's connection to the cluster."""

    _log = Logger()

    def __init__(self, servers: list[str], node: str, lease_ttl: float, clock: Any,
                 creds: str | None = None, replicas: int = 1) -> None:
        self.servers = servers
        self.replicas = replicas
        self.node = node
        self.lease_ttl = lease_ttl
        self.creds = creds
        self._clock = clock
        self._nc: Any = None
        self._leases: Any = None
        self._nodes: Any = None
        self.connected = False
        #: Called with True/False when the bus comes and goes.
        self._listeners: list[Callable[[bool], None]] = []
        self._connecting: Deferred | None = None
        self._announcer = LoopingCall(self._announce)
        self._announcer.clock = clock
        self._started_at = clock.seconds()
        #: For the status page and /metrics.
        self.reconnects = 0
        self.disconnects = 0
        self.lease_changes = 0
        #: node name -> what it last announced (refreshed from the registry).
        self.nodes: dict[str, dict] = {}
        #: Upstreams this node holds: lease key -> since (filled by the links).
        self.holding: dict[str, float] = {}

    # -- connection ------------------------------------------------------------------

    def listen(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    def unlisten(self, listener: Callable[[bool], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def startService(self) -> None:
        super().startService()
        self._connecting = _later(self._connect())
        self._connecting.addErrback(lambda failure: self._log.failure(
            "bus: connecting failed", failure))

    async def _connect(self) -> None:
        options: dict[str, Any] = dict(
            servers=self.servers, name=self.node, connect_timeout=CONNECT_TIMEOUT,
            reconnect_time_wait=RETRY_WAIT, max_reconnect_attempts=-1, allow_reconnect=True,
            ping_interval=1, max_outstanding_pings=2,
            disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
            error_cb=self._error, closed_cb=self._closed)
        if self.creds:
            options["user_credentials"] = self.creds
        if any(server.startswith("tls://") for server in self.servers):
            options["tls"] = ssl.create_default_context()
        attempt = 0
        while self.running:
            attempt += 1
            try:
                self._nc = await nats.connect(**options)
                break
            except Exception as problem:  # nats raises several unrelated types
                if attempt == 1 or attempt % 30 == 0:
                    self._log.warn("bus: cannot reach {servers} ({error}); retrying every"
                                   " {wait}s", servers=",".join(_safe(s) for s in self.servers),
                                   error=str(problem) or type(problem).__name__,
                                   wait=RETRY_WAIT)
                await asyncio.sleep(RETRY_WAIT)
        if not self.running:
            return
        if not await self._ensure_buckets():
            return
        self._log.info("bus: connected to {server} as node {node}",
                       server=_safe(str(self._nc.connected_url.geturl())
                                    if self._nc.connected_url else "?"), node=self.node)
        self._set_connected(True)
        self._announcer.start(max(0.5, self.lease_ttl / 2), now=True)

    async def _ensure_buckets(self) -> bool:
        """Open (or create) the buckets, retrying while the server cannot serve them."""
        attempt = 0
        while self.running and self._nc is not None and self._nc.is_connected:
            attempt += 1
            try:
                await self._buckets()
                return True
            except Exception as problem:  # nats raises several unrelated types
                if attempt == 1 or attempt % 30 == 0:
                    self._log.error(
                        "bus: the NATS server gives no JetStream key-value buckets ({error});"
                        " is JetStream enabled (nats-server -js)? Retrying every {wait}s",
                        error=str(problem) or type(problem).__name__, wait=RETRY_WAIT)
                await asyncio.sleep(RETRY_WAIT)
        return False

    async def _buckets(self) -> None:
        js = self._nc.jetstream()
        for name, ttl, attribute in ((subjects.LEASES, self.lease_ttl, "_leases"),
                                     (subjects.NODES, self.lease_ttl * 3, "_nodes")):
            try:
                bucket = await js.key_value(name)
            except BucketNotFoundError:
                try:
                    bucket = await js.create_key_value(KeyValueConfig(
                        bucket=name, ttl=ttl, history=1, storage=StorageType.FILE,
                        replicas=self.replicas))
                except Exception:  # another node created it meanwhile
                    bucket = await js.key_value(name)
            setattr(self, attribute, bucket)

    async def _disconnected(self) -> None:
        if self.connected:
            self.disconnects += 1
            self._log.warn("bus: connection lost; upstreams this node holds close now")
        self._set_connected(False)

    async def _reconnected(self) -> None:
        self.reconnects += 1
        self._log.info("bus: reconnected")
        if await self._ensure_buckets():  # a server restarted without its store has none
            self._set_connected(True)

    async def _error(self, problem: Exception) -> None:
        self._log.debug("bus: {error}", error=str(problem))

    async def _closed(self) -> None:
        self._set_connected(False)

    def _set_connected(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        for listener in list(self._listeners):
            listener(connected)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._announcer.running:
            self._announcer.stop()
        self._set_connected(False)
        nc, self._nc = self._nc, None
        if nc is None:
            return succeed(None)
        forget = self._nodes.delete(subjects.node_key(self.node)) if self._nodes else None

        async def close() -> None:
            if forget is not None:
                try:
                    await asyncio.wait_for(forget, 1)
                except Exception:
                    pass
            await nc.close()

        return _later(close()).addErrback(lambda _: None)

    # -- the node registry -------------------------------------------------------------

    def _announce(self) -> None:
        if not self.connected or self._nodes is None:
            return
        info = {"node": self.node, "started": self._started_at, "seen": self._clock.seconds(),
                "holding": sorted(self.holding)}
        _later(self._refresh(codec.to_json(info))).addErrback(lambda _: None)

    async def _refresh(self, info: bytes) -> None:
        await self._nodes.put(subjects.node_key(self.node), info)
        nodes = {}
        try:
            keys = await self._nodes.keys()
        except Exception:  # no keys at all
            keys = []
        for key in keys:
            try:
                entry = await self._nodes.get(key)
            except KeyNotFoundError:
                continue
            if entry.value:
                record = codec.decode(entry.value)
                nodes[record.get("node", key)] = record
        self.nodes = nodes

    # -- leases ------------------------------------------------------------------------

    def acquire(self, key: str, value: bytes) -> Deferred:
        """The lease's revision if it was free, else fails with ``LeaseTaken``."""
        return self._kv(self._leases.create(key, value))

    def renew(self, key: str, value: bytes, revision: int) -> Deferred:
        """The new revision, or ``LeaseTaken`` if the lease is no longer ours."""
        return self._kv(self._leases.update(key, value, last=revision))

    def release(self, key: str, revision: int) -> Deferred:
        """Give the lease up at once (if it is still ours)."""
        return self._kv(self._leases.delete(key, last=revision)).addErrback(lambda _: None)

    def holder(self, key: str) -> Deferred:
        """(value, revision) of the lease, or None when it is free."""
        async def get() -> Any:
            try:
                entry = await self._leases.get(key)
            except KeyNotFoundError:
                return None
            return (entry.value, entry.revision) if entry.value else None
        return self._kv(get())

    def _kv(self, coroutine: Awaitable[Any]) -> Deferred:
        if not self.connected or self._leases is None:
            if asyncio.iscoroutine(coroutine):
                coroutine.close()
            return Deferred.fromFailure(LeaseTaken("the bus is not connected"))

        async def guarded() -> Any:
            try:
                return await asyncio.wait_for(coroutine, max(1.0, self.lease_ttl / 2))
            except KeyWrongLastSequenceError as problem:
                raise LeaseTaken(str(problem)) from None
        return _later(guarded())

    # -- messages ------------------------------------------------------------------------

    def publish(self, subject: str, data: bytes) -> None:
        """Fire and forget; nothing is queued while the bus is away (stale market data
        is worse than a gap)."""
        if self.connected and self._nc is not None:
            _eagerly(self._nc.publish(subject, data))

    def subscribe(self, subject: str, callback: Callable[[bytes, Any], None]) -> Any:
        """``callback(data, reply)``: ``reply(bytes)`` answers a request (None if none).
        Returns a handle with ``stop()``."""
        return _Subscription(self, subject, callback)

    def request(self, subject: str, data: bytes, timeout: float) -> Deferred:
        if not self.connected or self._nc is None:
            return Deferred.fromFailure(ConnectionError("the bus is not connected"))

        async def ask() -> bytes:
            reply = await self._nc.request(subject, data, timeout=timeout)
            return reply.data
        return _later(ask())


class _Subscription:
    """A subject subscription that outlives reconnects (nats-py resubscribes itself)."""

    def __init__(self, bus: Bus, subject: str, callback: Callable[[bytes, Any], None]) -> None:
        self._bus = bus
        self._callback = callback
        self._sub: Any = None
        self._stopped = False
        if bus._nc is not None:
            _later(self._start(subject)).addErrback(lambda _: None)

    async def _start(self, subject: str) -> None:
        sub = await self._bus._nc.subscribe(subject, cb=self._message)
        if self._stopped:
            await sub.unsubscribe()
        else:
            self._sub = sub

    async def _message(self, msg: Any) -> None:
        if self._stopped:
            return
        def respond(data: bytes) -> None:
            _later(msg.respond(data)).addErrback(lambda _: None)

        self._callback(msg.data, respond if msg.reply else None)

    def stop(self) -> None:
        self._stopped = True
        if self._sub is not None:
            sub, self._sub = self._sub, None
            _later(sub.unsubscribe()).addErrback(lambda _: None)


def _safe(server: str) -> str:
    """A server URL without its credentials (they may be in it)."""
    if "@" in server:
        scheme, _, rest = server.partition("://")
        return "%s://%s" % (scheme, rest.rsplit("@", 1)[1])
    return server
