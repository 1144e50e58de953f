"""``--replay PATH``: one timeline over a recording, played to the replay links.

Frames are read ahead in batches by the worker thread (``Catalog.timeline``)
and handed, at their time, to every replay link open on their endpoint; each
link splits them and reports to its session as a live link would, so routing,
fan-out, encodings and acks are the live ones.

Playback starts when the first client subscribes (a strategy started after the
proxy misses nothing).  At ``speed`` 1 frames keep their recorded spacing, at
10 a tenth of it; at 0 they go as fast as the slowest subscribed client reads:
before each batch the player waits until every subscribed client's connection
takes writes again, so nothing is lost and no client is cut off, and it waits
while nobody is subscribed.  At the end it starts over (``loop``) or stops:
clients stay connected and get nothing more.
"""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any, Iterator

import msgpack
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from alpaca_proxy import codec
from alpaca_proxy.recording.catalog import Catalog
from alpaca_proxy.recording.fileformat import Frame

#: Frames read per trip to the worker thread, and the bytes that end a batch sooner.
READ_FRAMES = 2000
READ_BYTES = 8 << 20
#: Frames delivered per reactor turn at most (other work gets its turn between).
TURN_FRAMES = 200
#: At speed 0: bytes delivered between checks that every client still reads.
TURN_BYTES = 256 << 10
#: Frames due within this many seconds of now go out together (never later).
EARLY = 0.001


def rfc3339_ns(nanoseconds: int) -> str:
    """Nanoseconds since the epoch as Alpaca's JSON writes times."""
    return codec.rfc3339(msgpack.Timestamp.from_unix_nano(nanoseconds))


class Player(Service):
    """Plays a recording's frames to the links attached to their endpoints."""

    _log = Logger()

    def __init__(self, catalog: Catalog, clock: Any, worker: Any, speed: float = 1.0,
                 start_ns: int | None = None, end_ns: int | None = None, loop: bool = False,
                 shift: bool = False) -> None:
        self.catalog = catalog
        self.speed = speed
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.loop = loop
        self.shift = shift
        self._clock = clock
        self._worker = worker
        #: endpoint -> links open on it (``upstream.replay.ReplayLink``).
        self._links: dict[str, set[Any]] = {}
        #: waiting (for a subscriber) | playing | ended
        self.state = "waiting"
        #: Receive time of the last frame played, and counters for the page.
        self.position_ns: int | None = None
        self.frames_played = 0
        self.loops = 0
        self._timeline: Iterator[tuple[str, Frame]] | None = None
        self._queue: deque[tuple[str, Frame]] = deque()
        self._exhausted = False
        self._reading: Deferred | None = None
        self._step_call: Any = None
        self._waiting_for_clients: Deferred | None = None
        self._anchor: tuple[float, int] | None = None  # (wall seconds, recorded ns)

    @property
    def endpoints(self) -> frozenset[str]:
        return self.catalog.endpoints

    # -- links -------------------------------------------------------------------

    def attach(self, link: Any) -> None:
        self._links.setdefault(link.stream.path, set()).add(link)

    def detach(self, link: Any) -> None:
        links = self._links.get(link.stream.path)
        if links is not None:
            links.discard(link)
            if not links:
                del self._links[link.stream.path]

    def interest(self) -> None:
        """A client subscribed: playback starts (or, at speed 0, goes on)."""
        if not self.running:
            return
        if self.state == "waiting":
            if self.position_ns is None:
                self._log.info("replay: first subscription, playing {path} at speed {speed}",
                               path=self.catalog.path, speed=self.speed)
            self.state = "playing"
            self._schedule(0)

    # -- reading -------------------------------------------------------------------

    def _open_timeline(self) -> None:
        self._timeline = self.catalog.timeline(self.start_ns, self.end_ns)
        self._exhausted = False
        self._anchor = None

    def _read_more(self) -> None:
        if self._reading is not None or self._exhausted or self._timeline is None:
            return
        timeline = self._timeline
        self._reading = self._worker.run(_read_batch, timeline)

        def got(batch: list[tuple[str, Frame]]) -> None:
            self._reading = None
            if timeline is not self._timeline:
                return  # started over meanwhile
            if len(batch) == 0:
                self._exhausted = True
            self._queue.extend(batch)
            if self.state == "playing" and self._step_call is None and (
                    self._waiting_for_clients is None):
                self._schedule(0)

        def failed(failure: Any) -> None:
            self._reading = None
            self._exhausted = True
            self._log.error("replay: cannot read {path}: {error}", path=self.catalog.path,
                            error=failure.getErrorMessage())

        self._reading.addCallbacks(got, failed)

    # -- playing -------------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if self._step_call is not None and self._step_call.active():
            self._step_call.cancel()
        self._step_call = self._clock.callLater(max(0.0, delay), self._step)

    def _step(self) -> None:
        self._step_call = None
        if self.state != "playing" or not self.running:
            return
        if len(self._queue) < READ_FRAMES // 2:
            self._read_more()
        if not self._queue:
            if self._exhausted:
                self._ended()
            return  # the read under way schedules the next step
        if self.speed == 0:
            self._step_as_read()
        else:
            self._step_on_time()

    def _step_on_time(self) -> None:
        now = self._clock.seconds()
        if self._anchor is None:
            self._anchor = (now, self._queue[0][1].received)
        wall, recorded = self._anchor
        played = 0
        while self._queue and played < TURN_FRAMES:
            due = wall + (self._queue[0][1].received - recorded) / 1e9 / self.speed
            if due > now + EARLY:
                # Woken up to EARLY before: timers never fire exactly on time (and
                # floats of seconds since the epoch carry ~0.2 us of rounding).
                self._schedule(due - now - EARLY)
                return
            self._play(*self._queue.popleft())
            played += 1
        self._schedule(0)

    def _step_as_read(self) -> None:
        clients = self._subscribed_clients()
        if not clients:
            self.state = "waiting"  # nobody to read it: wait for the next subscription
            return
        busy = [waiter for waiter in (client.drained() for client in clients)
                if not waiter.called]
        if busy:
            self._waiting_for_clients = DeferredList(busy)
            self._waiting_for_clients.addCallback(self._drained)
            return
        sent = played = 0
        while self._queue and played < TURN_FRAMES and sent < TURN_BYTES:
            endpoint, frame = self._queue.popleft()
            self._play(endpoint, frame)
            sent += len(frame.payload)
            played += 1
        self._schedule(0)

    def _drained(self, _: Any) -> None:
        self._waiting_for_clients = None
        if self.state == "playing":
            self._schedule(0)

    def _subscribed_clients(self) -> list[Any]:
        clients: dict[Any, None] = {}
        for links in self._links.values():
            for link in links:
                if link.subscribed:
                    session = link.receiver
                    clients.update(dict.fromkeys(
                        c for c in session.clients if session.subscriptions_of(c)))
        return list(clients)

    def _play(self, endpoint: str, frame: Frame) -> None:
        self.position_ns = frame.received
        self.frames_played += 1
        links = self._links.get(endpoint)
        if not links:
            return
        shift_ns = int(self._clock.seconds() * 1e9) - frame.received if self.shift else 0
        for link in list(links):
            link.play(frame, shift_ns)

    def _ended(self) -> None:
        if self.loop and self.frames_played:
            self.loops += 1
            self._log.info("replay: end of {path}, starting over (loop {loops})",
                           path=self.catalog.path, loops=self.loops)
            self._open_timeline()
            self._read_more()
            return
        self.state = "ended"
        self._log.info("replay: end of {path} after {frames} frames{empty}",
                       path=self.catalog.path, frames=self.frames_played,
                       empty="" if self.frames_played else " (nothing inside the window)")

    # -- service -------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._log.warn(
            "REPLAY: serving the recording {path} instead of Alpaca ({endpoints}) at"
            " {pace}{window}{loop}; playback starts at the first subscription",
            path=self.catalog.path, endpoints=", ".join(sorted(self.endpoints)),
            pace="speed %g" % self.speed if self.speed else "the pace of the slowest reader",
            window="".join(" %s %s" % (word, rfc3339_ns(ns)) for word, ns in
                           (("from", self.start_ns), ("to", self.end_ns)) if ns is not None),
            loop=", looping" if self.loop else "")
        self._worker.start()
        self._open_timeline()
        self._read_more()  # the first batch is ready before anyone subscribes

    def stopService(self) -> Deferred:
        super().stopService()
        if self._step_call is not None and self._step_call.active():
            self._step_call.cancel()
        self._step_call = None
        reading = self._reading if self._reading is not None else succeed(None)
        finished: Deferred = Deferred()

        def stop(_: Any) -> None:
            self._worker.stop()
            finished.callback(None)

        reading.addBoth(lambda outcome: None).addCallback(stop)
        return finished

    def snapshot(self) -> dict[str, Any]:
        """For the status page: where playback is."""
        return {
            "path": self.catalog.path,
            "state": self.state,
            "speed": self.speed,
            "position": rfc3339_ns(self.position_ns) if self.position_ns is not None else None,
            "from": rfc3339_ns(self.start_ns) if self.start_ns is not None else None,
            "to": rfc3339_ns(self.end_ns) if self.end_ns is not None else None,
            "loop": self.loop,
            "loops": self.loops,
            "shift": self.shift,
            "frames_played": self.frames_played,
            "endpoints": sorted(self.endpoints),
        }


def _read_batch(timeline: Iterator[tuple[str, Frame]]) -> list[tuple[str, Frame]]:
    """In the worker thread: the next frames, up to READ_FRAMES or READ_BYTES."""
    batch: list[tuple[str, Frame]] = []
    size = 0
    for item in islice(timeline, READ_FRAMES):
        batch.append(item)
        size += len(item[1].payload)
        if size >= READ_BYTES:
            break
    return batch
