"""JSON and MessagePack on the wire, the way Alpaca writes them.

Upstream always speaks MessagePack to the proxy.  An upstream frame is split once
into its elements, each kept as its original bytes (so MessagePack clients get
them byte for byte: timestamp extension -1 intact, ``T`` first, numbers
untouched) next to the decoded message (for routing, and for rendering JSON once
per element, shared by every JSON client).
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Optional, Sequence

import msgpack
import msgspec
import orjson

#: Python clients (websockets, default max_size) close with 1009 on anything larger.
MAX_MESSAGE_BYTES = 1 << 20

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class DecodeError(ValueError):
    """A payload that is neither valid JSON nor valid MessagePack."""


def rfc3339(stamp: msgpack.Timestamp) -> str:
    """Render a timestamp as Go's RFC3339Nano in UTC, the form Alpaca's JSON uses.

    Up to nine fraction digits, trailing zeros trimmed, no fraction when zero.
    """
    moment = _EPOCH + timedelta(seconds=stamp.seconds)
    text = "%04d-%02d-%02dT%02d:%02d:%02d" % (
        moment.year, moment.month, moment.day,
        moment.hour, moment.minute, moment.second,
    )
    if stamp.nanoseconds:
        text += ("." + "%09d" % stamp.nanoseconds).rstrip("0")
    return text + "Z"


def _json_default(value: Any) -> Any:
    if isinstance(value, msgpack.Timestamp):
        return rfc3339(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, msgpack.ExtType):
        return base64.b64encode(value.data).decode("ascii")
    raise TypeError("cannot render %s as JSON" % type(value).__name__)


def _plain(value: Any) -> Any:
    """A JSON-safe copy: text keys, and what orjson refuses turned into text."""
    if isinstance(value, dict):
        return {_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, msgpack.ExtType):  # a tuple, but not a list
        return _json_default(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not (
            -(2 ** 63) <= value < 2 ** 64):
        return str(value)
    return value


def _key(key: Any) -> str:
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).decode("utf-8", "replace")
    return key if isinstance(key, str) else str(key)


def to_json(message: Any) -> bytes:
    """One message (or array of them) as compact JSON, key order preserved.

    Never raises for what MessagePack can carry: anything orjson refuses (bytes
    keys, unknown extension types) is rendered as text rather than breaking the
    fan-out of a whole frame.
    """
    try:
        return orjson.dumps(message, default=_json_default)
    except (TypeError, orjson.JSONEncodeError):
        return orjson.dumps(_plain(message), default=_json_default)


def to_msgpack(message: Any) -> bytes:
    """One message (or array of them) as MessagePack, key order preserved."""
    return msgpack.packb(message, use_bin_type=True, datetime=False)


def decode(payload: bytes) -> Any:
    """Decode a client's payload by its content, whatever the frame opcode.

    C# sends JSON in binary frames and the Python SDKs send MessagePack, so the
    opcode says nothing; the first byte does (``{``/``[`` is JSON).
    """
    head = payload.lstrip()[:1]
    try:
        if head in (b"{", b"["):
            return orjson.loads(payload)
        return msgpack.unpackb(payload, raw=False, timestamp=0)
    except Exception as error:  # msgpack raises several unrelated types
        raise DecodeError(str(error)) from None


#: Messages one client frame may carry (an array of requests); more is refused whole.
MAX_BATCH = 64
#: Keys one decoded client map may have (the Go SDK sends a dozen channels).
MAX_CLIENT_MAP = 256


def decode_client(payload: bytes, max_items: int) -> Any:
    """Decode a client's payload with the work bounded before any element is built.

    A top-level array of more than ``MAX_BATCH`` messages is refused from its
    header; no array may hold more than ``max_items`` entries nor a map more
    than ``MAX_CLIENT_MAP`` keys (MessagePack checks while decoding; JSON is
    refused when it has more separators than that could need).
    """
    head = payload.lstrip()[:1]
    if head in (b"{", b"["):
        if payload.count(b",") > max_items + MAX_BATCH * MAX_CLIENT_MAP:
            raise DecodeError("too many items")
        try:
            decoded = orjson.loads(payload)
        except orjson.JSONDecodeError as error:
            raise DecodeError(str(error)) from None
    else:
        first = payload[:1]
        if first == b"\xdc" or first == b"\xdd":
            size = 3 if first == b"\xdc" else 5
            if int.from_bytes(payload[1:size], "big") > MAX_BATCH:
                raise DecodeError("too many messages in one frame")
        try:
            decoded = msgpack.unpackb(payload, raw=False, timestamp=0,
                                      max_array_len=max(max_items, MAX_BATCH),
                                      max_map_len=MAX_CLIENT_MAP)
        except Exception as error:  # msgpack raises several unrelated types
            raise DecodeError(str(error)) from None
    if isinstance(decoded, list) and len(decoded) > MAX_BATCH:
        raise DecodeError("too many messages in one frame")
    return decoded


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


class Element:
    """One message from an upstream frame: its original bytes, decoded when needed.

    Fan-out to MessagePack clients needs only the bytes and the message's type
    (``T``) and symbol (``S``), which ``split_frame`` reads without decoding the
    rest; the map itself is decoded on first use (JSON rendering, order books,
    control messages).  That decode was most of what a frame cost, so
    MessagePack-only traffic no longer pays it.
    """

    __slots__ = ("raw", "kind", "symbol", "_message", "_json")

    def __init__(self, message: dict[str, Any] | None, raw: bytes,
                 kind: Any = None, symbol: str | None = None) -> None:
        self.raw = raw
        self._message = message
        self._json: bytes | None = None
        #: The message's ``T`` (its type on Alpaca's streams).
        self.kind = kind if message is None else _text(message.get("T"))
        #: Its ``S`` when read from the bytes; ``None``: route by the message.
        self.symbol = symbol

    @property
    def message(self) -> dict[str, Any]:
        if self._message is None:
            self._message = _decode_element(self.raw, self.kind, self.symbol)
        return self._message

    @property
    def json(self) -> bytes:
        """The message rendered as JSON, computed once for all JSON clients."""
        if self._json is None:
            self._json = to_json(self.message)
        return self._json

    def __repr__(self) -> str:
        return "Element(%r, %r)" % (self.message, self.raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Element):
            return NotImplemented
        return self.message == other.message and self.raw == other.raw

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def of(cls, message: dict[str, Any]) -> "Element":
        """An element made locally (not spliced from upstream bytes)."""
        return cls(message, to_msgpack(message))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _decode_element(raw: bytes, kind: str | None, symbol: str | None) -> dict[str, Any]:
    """An element's map, decoded after the frame was already split and routed.

    Its structure was checked when the frame was split; what only a full decode
    finds (text that is not UTF-8, keys that are not text) no longer costs the
    whole frame: such text is decoded with replacement characters and, failing
    everything, the message is what its head said.
    """
    try:
        return msgpack.unpackb(raw, raw=False, timestamp=0)
    except Exception:  # msgpack raises several unrelated types
        pass
    try:
        decoded = msgpack.unpackb(raw, raw=False, timestamp=0, unicode_errors="replace",
                                  strict_map_key=False)
        if isinstance(decoded, dict):
            return decoded
    except Exception:
        pass
    return {"T": kind, "S": symbol}


class _Head(msgspec.Struct):
    """What routing reads of a data message: its type and its symbol."""

    T: Optional[str] = None
    S: Optional[str] = None


#: Each element's bytes, and each element's head, each in one C-level pass.
_RAW_ELEMENTS = msgspec.msgpack.Decoder(list[msgspec.Raw])
_HEADS = msgspec.msgpack.Decoder(list[_Head])


def split_frame(frame: bytes) -> list[Element]:
    """Split an upstream MessagePack frame (an array of maps) into elements.

    Two passes in C (msgspec) give every element's bytes and its ``T`` and ``S``
    wherever they are in the map, without building the rest; the maps are
    decoded on first use.  What that refuses (a lone map, a ``T`` or ``S`` that is
    not text, keys that are not text, garbage) takes ``_split_exactly``.
    """
    try:
        raws = _RAW_ELEMENTS.decode(frame)
        heads = _HEADS.decode(frame)
    except msgspec.DecodeError:  # ValidationError is one too
        return _split_exactly(frame)
    return [Element(None, raw, head.T, head.S) for raw, head in zip(map(bytes, raws), heads)]


_MAP_HEADERS = frozenset(range(0x80, 0x90)) | {0xde, 0xdf}


def _split_exactly(frame: bytes) -> list[Element]:
    """The split of any frame, each element decoded at once; DecodeError if not a frame.

    Element boundaries come from a pass that only skips (no objects built).  A
    lone map is taken as an array of one.
    """
    try:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(frame) + 1)
        unpacker.feed(frame)
        if frame[:1] and frame[0] in _MAP_HEADERS:  # a lone map
            count, start = 1, 0
        else:
            count = unpacker.read_array_header()
            start = unpacker.tell()
        elements = []
        for _ in range(count):
            unpacker.skip()
            end = unpacker.tell()
            raw = frame[start:end]
            message = msgpack.unpackb(raw, raw=False, timestamp=0)
            if not isinstance(message, dict):
                raise DecodeError("frame is not an array of maps")
            elements.append(Element(message, raw))
            start = end
        if start != len(frame):
            raise DecodeError("extra bytes after the frame")
    except DecodeError:
        raise
    except Exception as error:  # msgpack raises several unrelated types
        raise DecodeError(str(error)) from None
    return elements


def split_json_frame(frame: bytes) -> list[Element]:
    """Split a JSON frame (an array of objects, as Polygon sends) into elements.

    JSON clients get each element re-rendered once (orjson keeps key order and
    numbers); there are no MessagePack bytes to splice, so ``raw`` is empty.
    """
    try:
        decoded = orjson.loads(frame)
    except orjson.JSONDecodeError as error:
        raise DecodeError(str(error)) from None
    messages = [decoded] if isinstance(decoded, dict) else decoded
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DecodeError("frame is not an array of objects")
    return [Element(message, b"") for message in messages]


def _chunks(parts: Sequence[bytes], overhead: int, separator: int) -> Iterator[Sequence[bytes]]:
    """Group parts into runs whose framed size stays within MAX_MESSAGE_BYTES.

    A single part larger than the limit still goes out, alone: it cannot be split.
    """
    start, size = 0, overhead
    for index, part in enumerate(parts):
        grown = size + len(part) + (separator if index > start else 0)
        if grown > MAX_MESSAGE_BYTES and index > start:
            yield parts[start:index]
            start, grown = index, overhead + len(part)
        size = grown
    if start < len(parts):
        yield parts[start:]


class Encoding:
    """How one client wants its frames: a name, a frame type, and an encoder."""

    name: str
    binary: bool

    def encode(self, message: Any) -> bytes:
        raise NotImplementedError

    def frames(self, elements: Sequence[Element]) -> Iterator[bytes]:
        """Arrays of elements, each array within MAX_MESSAGE_BYTES."""
        raise NotImplementedError

    def control(self, message: dict[str, Any]) -> bytes:
        """A control message: always alone in an array of one."""
        return self.encode([message])

    def __repr__(self) -> str:
        return "<Encoding %s>" % (self.name,)


class _Json(Encoding):
    name = "json"
    binary = False

    def encode(self, message: Any) -> bytes:
        return to_json(message)

    def frames(self, elements: Sequence[Element]) -> Iterator[bytes]:
        parts = [element.json for element in elements]
        if not parts:
            return iter(())
        if sum(map(len, parts)) + len(parts) + 1 <= MAX_MESSAGE_BYTES:
            return iter((b"[" + b",".join(parts) + b"]",))
        return (b"[" + b",".join(run) + b"]" for run in _chunks(parts, 2, 1))


class _MsgPack(Encoding):
    name = "msgpack"
    binary = True

    def encode(self, message: Any) -> bytes:
        return to_msgpack(message)

    def frames(self, elements: Sequence[Element]) -> Iterator[bytes]:
        parts = [element.raw for element in elements]
        if not parts:
            return iter(())
        if sum(map(len, parts)) + 5 <= MAX_MESSAGE_BYTES:  # nearly always: one frame
            return iter((_array_header(len(parts)) + b"".join(parts),))
        return (_array_header(len(run)) + b"".join(run) for run in _chunks(parts, 5, 0))


JSON: Encoding = _Json()
MSGPACK: Encoding = _MsgPack()


def encoding_for(content_type: str | None) -> Encoding:
    """The encoding a client asked for with its upgrade ``Content-Type``."""
    if content_type and "msgpack" in content_type.lower():
        return MSGPACK
    return JSON
