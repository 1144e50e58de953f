"""What one ``send`` of a client frame costs on this machine: the floor of fan-out.

Every client that wants a frame costs the proxy at least one ``send`` system call
(loopback TCP does the receiver's side of the work in the sender's call too).
This times nothing else: one process, N connected loopback pairs, a frame sent
to each in turn, the receiving ends drained between rounds (not timed).

    python bench/send_floor.py --clients 500 --size 700
"""

from __future__ import annotations

import argparse
import json
import socket
import time


def pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(count)
    made = []
    for _ in range(count):
        sender = socket.create_connection(listener.getsockname())
        sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        receiver, _ = listener.accept()
        receiver.setblocking(False)
        made.append((sender, receiver))
    listener.close()
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--size", type=int, default=700, help="bytes per frame")
    parser.add_argument("--rounds", type=int, default=400)
    opts = parser.parse_args()
    connections = pairs(opts.clients)
    frame = b"x" * opts.size
    spent = 0.0
    cpu_spent = 0.0
    for _ in range(opts.rounds):
        started, cpu_started = time.perf_counter(), time.process_time()
        for sender, _ in connections:
            sender.send(frame)
        spent += time.perf_counter() - started
        cpu_spent += time.process_time() - cpu_started
        for _, receiver in connections:
            receiver.recv(1 << 16)
    sends = opts.clients * opts.rounds
    print(json.dumps({"clients": opts.clients, "size": opts.size,
                      "us_per_send": round(1e6 * spent / sends, 2),
                      "cpu_us_per_send": round(1e6 * cpu_spent / sends, 2)}))


if __name__ == "__main__":
    main()
