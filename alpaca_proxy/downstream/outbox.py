"""Data frames for clients, sent at the end of the reactor turn that made them.

``transport.write`` queues and asks the reactor to watch the socket for
writability: per client and frame, two ``epoll_ctl`` calls and a wake-up besides
the ``send``.  Sending at once (``net.write_now``) costs one ``send``, but one per
upstream frame: when the proxy falls behind and one turn brings several frames,
each client would get each as its own TCP segment and wake-up, where Twisted's
buffer would have joined them (500 identical clients lost 40 % of their
messages to reader lag that way, in ``bench/fanout.py``).  So frames wait here for
the rest of the turn and go out joined, one ``send`` per client per turn.

Order: a client's other writes (acks, errors, pings, close) go through Autobahn's
``sendData``, which the client protocol overrides to send what waits here first.
"""

from __future__ import annotations

from typing import Any


class Outbox:
    """Frames per client until the turn ends (``callLater(0)`` on the real reactor)."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._waiting: dict[Any, list[bytes]] = {}
        self._call: Any = None

    def put(self, client: Any, frame: bytes) -> None:
        frames = self._waiting.get(client)
        if frames is not None:
            frames.append(frame)
            return
        self._waiting[client] = [frame]
        if self._call is None:
            self._call = self._reactor.callLater(0, self.flush)

    def take(self, client: Any) -> list[bytes] | None:
        """A client's waiting frames, which it is about to send itself."""
        return self._waiting.pop(client, None) if self._waiting else None

    def flush(self) -> None:
        self._call = None
        waiting, self._waiting = self._waiting, {}
        for client, frames in waiting.items():
            client.write_frames(frames)
