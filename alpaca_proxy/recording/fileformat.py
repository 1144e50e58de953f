"""The recording file: standard zstd frames, each announced by a skippable frame.

A file holds one endpoint's frames for one UTC day, as a run of *blocks*.  A
block is a zstd skippable frame (magic ``0x184D2A50``, 8 bytes of content: the
length and CRC-32 of what follows) and then one ordinary zstd frame (content
size and checksum in its header) whose content is MessagePack records back to
back:

- a map: metadata (``format``, ``version``, ``provider``, ``endpoint`` ...),
  first in every run of blocks a process writes;
- an array ``[received_ns, binary, payload]``: one frame byte for byte as
  upstream sent it, its receive time in nanoseconds since the epoch, and whether
  it came in a binary websocket frame.

``zstdcat`` reads a file as it is (skippable frames are skipped).  A block is
written whole, about once a second; a crash can leave a torn block at the end
(or in the middle, once the proxy appends to the file again): each block's
length and CRC are checked and, on a mismatch, the reader scans forward for the
next block header, counting the bytes it skipped.
"""

from __future__ import annotations

import struct
import zlib
from datetime import date
from typing import Any, BinaryIO, Iterator, NamedTuple

import msgpack
import zstandard

FORMAT = "alpaca-proxy-recording"
VERSION = 1
#: The first zstd skippable-frame magic number, and its header as it sits on disk.
SKIPPABLE_MAGIC = 0x184D2A50
_HEADER = struct.Struct("<IIII")
_MAGIC_BYTES = struct.pack("<II", SKIPPABLE_MAGIC, 8)
#: Largest compressed block a reader accepts (a writer's blocks are far smaller).
MAX_BLOCK = 256 << 20
#: Bytes read at a time while scanning for the next block after a damaged one.
_SCAN = 1 << 20
#: What file names end with.
SUFFIX = ".zst"


class Frame(NamedTuple):
    """One recorded upstream frame."""

    received: int  # nanoseconds since the epoch
    binary: bool
    payload: bytes


def provider_of(kind: str) -> str:
    """Which provider a stream kind belongs to, as file names and metadata say it."""
    return {"trading": "trading", "polygon": "polygon"}.get(kind, "alpaca")


def file_name(kind: str, endpoint: str, day: date) -> str:
    """``alpaca_v2_iex.2026-12-02.zst``: provider, endpoint, UTC day."""
    return "%s%s.%s%s" % (provider_of(kind), endpoint.replace("/", "_"), day.isoformat(), SUFFIX)


def metadata(kind: str, endpoint: str, opened_ns: int, proxy_version: str) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "provider": provider_of(kind), "kind": kind,
            "endpoint": endpoint, "opened": opened_ns, "proxy": proxy_version}


#: A frame record's MessagePack head: array of 3, uint64 time, bool, bin32 length.
_FRAME_HEAD = struct.Struct(">BBQBBI")


def frame_head(received_ns: int, binary: bool, length: int) -> bytes:
    """The bytes that precede a frame's payload in its record.

    The recorder keeps this and a reference to the payload, instead of packing
    (copying) every frame on the reactor thread; joined, they are the record.
    """
    return _FRAME_HEAD.pack(0x93, 0xCF, received_ns, 0xC3 if binary else 0xC2, 0xC6, length)


def pack_frame(received_ns: int, binary: bool, payload: bytes) -> bytes:
    return frame_head(received_ns, binary, len(payload)) + payload


def pack_metadata(meta: dict[str, Any]) -> bytes:
    return msgpack.packb(meta, use_bin_type=True)


def new_compressor() -> zstandard.ZstdCompressor:
    """One per writing thread (a compressor is not shared between threads)."""
    return zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)


def encode_block(body: bytes, compressor: zstandard.ZstdCompressor) -> bytes:
    """Records (packed, concatenated) as one block: header frame, then the zstd frame."""
    compressed = compressor.compress(body)
    return _HEADER.pack(SKIPPABLE_MAGIC, 8, len(compressed),
                        zlib.crc32(compressed)) + compressed


def records(body: bytes) -> Iterator[dict[str, Any] | Frame]:
    """A block's records: metadata maps and ``Frame``s (anything else is skipped)."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(body), 1024))
    unpacker.feed(body)
    for record in unpacker:
        if isinstance(record, dict):
            yield record
        elif (isinstance(record, list) and len(record) == 3 and isinstance(record[0], int)
              and isinstance(record[2], bytes)):
            yield Frame(record[0], bool(record[1]), record[2])


class Reader:
    """Blocks of one file, in order, skipping damaged ones.

    ``skipped`` counts the bytes passed over (a torn tail, a damaged block),
    ``damaged`` the places where that happened.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._decompressor = zstandard.ZstdDecompressor()
        self.skipped = 0
        self.damaged = 0

    def blocks(self) -> Iterator[bytes]:
        """Each intact block's records, still packed."""
        while True:
            start = self._source.tell()
            header = self._source.read(_HEADER.size)
            if not header:
                return
            body = self._block(header)
            if body is not None:
                yield body
                continue
            self.damaged += 1
            if not self._resync(start + 1):
                self.skipped += self._source.tell() - start
                return
            self.skipped += self._source.tell() - start

    def _block(self, header: bytes) -> bytes | None:
        if len(header) < _HEADER.size:
            return None
        magic, size, length, crc = _HEADER.unpack(header)
        if magic != SKIPPABLE_MAGIC or size != 8 or length > MAX_BLOCK:
            return None
        compressed = self._source.read(length)
        if len(compressed) < length or zlib.crc32(compressed) != crc:
            return None
        try:
            return self._decompressor.decompress(compressed)
        except zstandard.ZstdError:
            return None

    def _resync(self, position: int) -> bool:
        """Move to the next block header at or after ``position``; False at the end."""
        self._source.seek(position)
        while True:
            chunk = self._source.read(_SCAN + len(_MAGIC_BYTES) - 1)
            found = chunk.find(_MAGIC_BYTES)
            if found >= 0:
                self._source.seek(position + found)
                return True
            if len(chunk) < _SCAN + len(_MAGIC_BYTES) - 1:
                return False
            position += _SCAN
            self._source.seek(position)


def read_file(path: str) -> Iterator[dict[str, Any] | Frame]:
    """Every record of a file (blocking: for worker threads and command-line tools)."""
    with open(path, "rb") as source:
        for body in Reader(source).blocks():
            yield from records(body)


def first_metadata(path: str) -> dict[str, Any] | None:
    """The metadata a file opens with, or None if it is not a recording."""
    try:
        with open(path, "rb") as source:
            for body in Reader(source).blocks():
                for record in records(body):
                    if isinstance(record, dict) and record.get("format") == FORMAT:
                        return record
                    return None
    except OSError:
        return None
    return None
