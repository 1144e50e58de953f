"""``python -m alpaca_proxy.recording info|export PATH``: look into a recording.

    python -m alpaca_proxy.recording info RECORDING [--json] [--top N]
    python -m alpaca_proxy.recording export RECORDING --format jsonl [--endpoint /v2/iex]
        [--from 2026-12-01T14:30:00Z] [--to ...] [--output FILE]

RECORDING is a file written by ``--record`` or the directory of them.  (argparse,
not ``usage.Options``: options may follow the path, as people type them.)
"""

from __future__ import annotations

import argparse
import os
import sys

from twisted.python import usage

from alpaca_proxy import codec
from alpaca_proxy.options import _instant
from alpaca_proxy.recording.catalog import Catalog, NotARecording
from alpaca_proxy.recording.inspection import export, info, render_info


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m alpaca_proxy.recording",
                                     description="Look into a recording made with --record.")
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser(
        "info", help="time range, frames, messages per channel and symbol, per endpoint")
    summary.add_argument("path", metavar="RECORDING", help="a recording file or directory")
    summary.add_argument("--json", action="store_true", help="print the summary as JSON")
    summary.add_argument("--top", type=int, default=20,
                         help="symbols shown per channel, busiest first (default 20)")
    lines = commands.add_parser(
        "export", help="one decoded message per line with its receive time (for pandas)")
    lines.add_argument("path", metavar="RECORDING", help="a recording file or directory")
    lines.add_argument("--format", choices=["jsonl"], default="jsonl",
                       help="output format (jsonl: one JSON object per line)")
    lines.add_argument("--endpoint", help="only this endpoint, e.g. /v2/iex")
    lines.add_argument("--from", dest="start", help="only frames received at or after this"
                       " time (RFC 3339, e.g. 2026-12-01T14:30:00Z)")
    lines.add_argument("--to", dest="end", help="only frames received before this time")
    lines.add_argument("--output", "-o", default="-", help="file to write (- standard output)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    arguments = parser.parse_args(argv)
    try:
        catalog = Catalog.open(arguments.path)
        if arguments.command == "export":
            start = _instant("--from", arguments.start) if arguments.start else None
            end = _instant("--to", arguments.end) if arguments.end else None
    except (usage.UsageError, NotARecording) as problem:
        parser.exit(2, "%s: %s\n" % (parser.prog, problem))
    if arguments.command == "info":
        summary = info(catalog)
        if arguments.json:
            sys.stdout.buffer.write(codec.to_json(summary) + b"\n")
        else:
            sys.stdout.write(render_info(summary, arguments.top))
        return 0
    if arguments.output == "-":
        try:
            export(catalog, sys.stdout.buffer, arguments.endpoint, start, end)
            sys.stdout.flush()
        except BrokenPipeError:  # piped into head: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    else:
        with open(arguments.output, "wb") as out:
            export(catalog, out, arguments.endpoint, start, end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
