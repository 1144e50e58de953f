"""What a recording holds (``info``) and its messages as JSON lines (``export``).

Both read files directly (they are command-line tools, not part of the proxy's
reactor) and decode frames the way a replay does, so what they count and print
is what a replay would deliver.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, BinaryIO, Iterator

from alpaca_proxy import codec
from alpaca_proxy.dialects import alpaca_data, polygon
from alpaca_proxy.recording import fileformat
from alpaca_proxy.recording.catalog import Catalog, Source
from alpaca_proxy.recording.player import rfc3339_ns
from alpaca_proxy.streams import POLYGON, TRADING, Stream
from alpaca_proxy.upstream.replay import data_elements, trading_events


def messages(stream: Stream, frame: fileformat.Frame) -> list[dict[str, Any]]:
    """A frame's data messages (trading: its events), decoded."""
    if stream.kind == TRADING:
        return trading_events(frame.payload)
    try:
        return [element.message for element in data_elements(stream.kind, frame.payload)]
    except codec.DecodeError:
        return []


def _channel(stream: Stream, message: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(channel, symbols) as the proxy routes the message."""
    if stream.kind == TRADING:
        data = message.get("data") if isinstance(message.get("data"), dict) else {}
        order = data.get("order") if isinstance(data.get("order"), dict) else {}
        return "trade_updates", (str(order.get("symbol", "")),)
    if stream.kind == POLYGON:
        dialect: Any = polygon.DIALECTS.get(stream.path.lstrip("/"))
    else:
        dialect = alpaca_data.DIALECTS.get(stream.kind)
    if dialect is None:
        return "?", ()
    channel, symbols = dialect.routing(message)
    return channel or "?", symbols


def info(catalog: Catalog) -> dict[str, Any]:
    """Per endpoint: files, time range, frames, messages per channel and symbol, damage."""
    endpoints = []
    for source in catalog.sources:
        endpoints.append(_source_info(source))
    return {"path": catalog.path, "endpoints": endpoints}


def _source_info(source: Source) -> dict[str, Any]:
    frames = 0
    first = last = None
    channels: Counter[str] = Counter()
    symbols: dict[str, Counter[str]] = {}
    damaged = skipped = 0
    for path in source.files:
        with open(path, "rb") as handle:
            reader = fileformat.Reader(handle)
            for body in reader.blocks():
                for record in fileformat.records(body):
                    if not isinstance(record, fileformat.Frame):
                        continue
                    frames += 1
                    first = record.received if first is None else min(first, record.received)
                    last = record.received if last is None else max(last, record.received)
                    for message in messages(source.stream, record):
                        channel, names = _channel(source.stream, message)
                        channels[channel] += 1
                        counts = symbols.setdefault(channel, Counter())
                        for name in names or ("",):
                            counts[name] += 1
            damaged += reader.damaged
            skipped += reader.skipped
    return {
        "endpoint": source.stream.path,
        "kind": source.stream.kind,
        "files": list(source.files),
        "first": rfc3339_ns(first) if first is not None else None,
        "last": rfc3339_ns(last) if last is not None else None,
        "frames": frames,
        "messages": dict(channels.most_common()),
        "symbols": {channel: dict(counts.most_common()) for channel, counts in symbols.items()},
        "damaged_blocks": damaged,
        "skipped_bytes": skipped,
    }


def render_info(summary: dict[str, Any], top: int = 20) -> str:
    """The summary for a person: one paragraph per endpoint, busiest symbols first."""
    lines = ["recording %s" % (summary["path"],)]
    for endpoint in summary["endpoints"]:
        lines.append("")
        lines.append("%s (%s): %d file(s), %s .. %s, %d frames" % (
            endpoint["endpoint"], endpoint["kind"], len(endpoint["files"]),
            endpoint["first"] or "-", endpoint["last"] or "-", endpoint["frames"]))
        if endpoint["damaged_blocks"]:
            lines.append("  damaged: %d place(s), %d bytes skipped (a torn tail after a crash"
                         " is one)" % (endpoint["damaged_blocks"], endpoint["skipped_bytes"]))
        for channel, count in endpoint["messages"].items():
            busiest = list(endpoint["symbols"].get(channel, {}).items())
            shown = ", ".join("%s %d" % (name or "(none)", n) for name, n in busiest[:top])
            more = " and %d more" % (len(busiest) - top,) if len(busiest) > top else ""
            lines.append("  %-14s %8d messages  %s%s" % (channel, count, shown, more))
    return "\n".join(lines) + "\n"


def export(catalog: Catalog, out: BinaryIO, endpoint: str | None = None,
           start_ns: int | None = None, end_ns: int | None = None) -> int:
    """Write one JSON object per message: receive time, endpoint, the message as Alpaca's
    JSON renders it (times as RFC 3339).  Returns how many lines were written."""
    count = 0
    for path, frame in _frames(catalog, endpoint, start_ns, end_ns):
        stream = catalog.stream(path)
        assert stream is not None
        received = rfc3339_ns(frame.received)
        for message in messages(stream, frame):
            out.write(codec.to_json({"received": received, "endpoint": path,
                                     "message": message}) + b"\n")
            count += 1
    return count


def _frames(catalog: Catalog, endpoint: str | None, start_ns: int | None,
            end_ns: int | None) -> Iterator[tuple[str, fileformat.Frame]]:
    if endpoint is not None:
        catalog = Catalog(catalog.path, tuple(s for s in catalog.sources
                                              if s.stream.path == endpoint))
    return catalog.timeline(start_ns, end_ns)
