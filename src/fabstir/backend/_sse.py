"""A sans-IO decoder for Server-Sent Events (the ``text/event-stream`` format), bytes in, events out.

Follows the WHATWG "interpreting an event stream" rules: lines end with CRLF, LF or a lone CR (a CR at the
end of one chunk and an LF at the start of the next are one line end); a line starting with ``:`` is a
comment; ``field: value`` loses one space after the colon; several ``data`` lines join with ``\\n``; an
empty line dispatches the event; an event with no ``data`` line is not dispatched; a leading byte-order
mark is skipped; bytes that are not UTF-8 decode to U+FFFD. At the end of the stream, an event that was
not terminated by an empty line is discarded — the caller learns of a cut stream from the missing
terminator of its own protocol (for chat completions, ``data: [DONE]``).

Every buffer is bounded: an over-long line or event raises :class:`SSEError` before more memory is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_EVENT_SIZE", "MAX_LINE_LENGTH", "SSEDecoder", "SSEError", "ServerSentEvent"]

#: One completion chunk is a few hundred bytes (a token and some metadata). 1 MiB is thousands of times
#: that, yet bounds what a broken or hostile backend can make a host buffer per stream.
MAX_LINE_LENGTH = 1 << 20
#: The data of one event (several ``data`` lines) is held until the empty line: same reasoning and bound.
MAX_EVENT_SIZE = 1 << 20

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = "\ufeff"


class SSEError(ValueError):
    """The bytes broke a limit of the decoder (the event-stream format itself accepts any bytes)."""


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event. ``event`` is ``"message"`` unless an ``event`` field named it."""

    data: str
    event: str = "message"
    #: the last event id seen on the stream so far (it carries over between events), if any
    id: str | None = None
    #: the reconnection time the server asked for, in milliseconds, if this event carried one
    retry: int | None = None


class SSEDecoder:
    """Feed it bytes as they arrive, in chunks of any size; it returns the events they complete."""

    def __init__(
        self, *, max_line_length: int = MAX_LINE_LENGTH, max_event_size: int = MAX_EVENT_SIZE
    ) -> None:
        if max_line_length < 1 or max_event_size < 1:
            raise ValueError("limits must be positive")
        self._max_line_length = max_line_length
        self._max_event_size = max_event_size
        self._buffer = bytearray()
        #: bytes of ``_buffer`` already known to hold no line end (so a long line is scanned once)
        self._scanned = 0
        #: the last chunk ended with CR: an LF at the start of the next one belongs to that line end
        self._skip_lf = False
        self._first_line = True
        self._data: list[str] = []
        self._data_size = 0
        self._has_data = False
        self._event_type = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Consumes ``data``; returns the events it completed, in order. Raises :class:`SSEError` if a line
        or an event grows past its limit."""
        if not data:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        buffer = self._buffer
        buffer += data
        events: list[ServerSentEvent] = []
        start = 0
        position = self._scanned
        while (match := _LINE_END.search(buffer, position)) is not None:
            end = match.start()
            if end - start > self._max_line_length:
                self._too_long()
            if match.group() == b"\r" and match.end() == len(buffer):
                self._skip_lf = True
            event = self._line(bytes(buffer[start:end]))
            if event is not None:
                events.append(event)
            start = position = match.end()
        del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) > self._max_line_length:
            self._too_long()
        return events

    def _too_long(self) -> None:
        raise SSEError(f"an event-stream line is longer than {self._max_line_length} bytes")

    def _line(self, raw: bytes) -> ServerSentEvent | None:
        line = raw.decode("utf-8", errors="replace")
        if self._first_line:
            self._first_line = False
            if line.startswith(_BOM):
                line = line[1:]
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data_size += len(value) + 1
            if self._data_size > self._max_event_size:
                raise SSEError(f"an event-stream event is larger than {self._max_event_size} characters")
            self._data.append(value)
            self._has_data = True
        elif field == "event":
            self._event_type = value
        elif field == "id" and "\x00" not in value:
            self._last_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        # other fields are ignored, as the format requires
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event: ServerSentEvent | None = None
        if self._has_data:
            event = ServerSentEvent(
                data="\n".join(self._data),
                event=self._event_type or "message",
                id=self._last_id,
                retry=self._retry,
            )
        self._data = []
        self._data_size = 0
        self._has_data = False
        self._event_type = ""
        self._retry = None
        return event
