"""HTTP/1.x requests in a TCP client byte stream: the host and path each request is for.

Requests are recognised by content, not by port: HTTP on odd ports and proxies are common, and
the first bytes decide cheaply (NOT_HTTP) for everything else. Only what a marker is matched
against is returned: the host (domain-name and http_host markers), the port written beside it and
the target's path (url markers); other headers and the bodies are never kept.

A request is accepted when it starts with a method token (upper-case letters, '-' or '_', at most
MAX_METHOD_LEN), one or more spaces, a request target without control characters, one or more
spaces and `HTTP/1.0` or `HTTP/1.1`, ending in CRLF or a bare LF (servers accept both, so a
client evading detection could use either). The header block must end, with an empty line, within
MAX_HEADER_LEN bytes of the request's start.

`HttpRequestStream` follows a whole connection: every request of a kept-alive connection,
pipelined ones included, stepping over request bodies (Content-Length, chunked) without buffering
them, since a marked host or URL may be asked for by any request, not only the first.

Everything here accepts any bytes-like object, never raises on input bytes and does work linear in
the bytes given; at most MAX_HEADER_LEN bytes (one incomplete header block) are ever buffered.

Name presentation: ASCII letters lower-cased, port and one trailing dot removed, IPv6 literals
without their brackets. Non-ASCII bytes are decoded as UTF-8 when valid, else as latin-1 so that
every byte survives as the code point of the same value. Path presentation: the target's bytes as
sent, decoded as latin-1 (each byte the code point of the same value), neither percent-decoded nor
case-folded: servers may tell paths apart by case, and url markers keep the exact path.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

__all__ = [
    "NOT_HTTP",
    "NEED_MORE",
    "DONE",
    "MALFORMED",
    "TUNNEL",
    "MAX_HEADER_LEN",
    "MAX_METHOD_LEN",
    "HttpRequest",
    "HttpRequestStream",
]

NOT_HTTP: Final = 0
NEED_MORE: Final = 1
DONE: Final = 2
MALFORMED: Final = 3
TUNNEL: Final = 4

# Request line plus headers. Common servers refuse beyond 8-16 KiB, so a longer head is not a
# request any server would act on, and the bound caps what a caller must buffer.
MAX_HEADER_LEN: Final = 16384
# Longest registered methods (e.g. UPDATEREDIRECTREF, BASELINE-CONTROL) are 17 characters.
MAX_METHOD_LEN: Final = 20

# A request-target is any run of bytes other than controls and space (RFC 9112 3.2 is stricter;
# raw UTF-8 is seen in the wild and accepted by servers, so it is accepted here too).
_TARGET: Final = re.compile(rb"[^\x00-\x20\x7f]*")
_SPACES: Final = re.compile(rb" *")
_SCHEME: Final = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://")
_AUTHORITY: Final = re.compile(rb"[^/?#]*")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]*")
_VERSIONS: Final = (b"HTTP/1.1", b"HTTP/1.0")
# Enough of a stream's start to tell a method token followed by a space from anything else: the
# cheap NOT_HTTP decision, made without waiting for a whole header block.
_METHOD_WINDOW: Final = MAX_METHOD_LEN + 2
# Bytes a chunk size may be followed by: extension (after optional whitespace) or line end.
_AFTER_CHUNK_SIZE: Final = b" \t;\r\n"
# No server accepts a chunk or a body this large (4 EiB); a larger number is a forgery, refused
# before a long run of digits builds a huge integer (Python refuses decimal ones past 4300 digits).
_MAX_CHUNK_SIZE: Final = 1 << 62
_MAX_CONTENT_LENGTH_DIGITS: Final = 18

# Body framing of a request (`_framing`): a length >= 0, or one of these.
_CHUNKED: Final = -1
_BAD_FRAMING: Final = -2

# Where `HttpRequestStream` is inside a chunked body (0: not in one).
_CHUNK_SIZE: Final = 1  # hex digits of a chunk size
_CHUNK_SIZE_LINE: Final = 2  # after the size: extensions up to the line end
_CHUNK_DATA_END: Final = 3  # CRLF after a chunk's data
_CHUNK_DATA_END_LF: Final = 4
_TRAILER_START: Final = 5  # start of a trailer line, or of the empty line ending the body
_TRAILER_LINE: Final = 6
_TRAILER_END_LF: Final = 7


class HttpRequest(NamedTuple):
    """One request head: what the url, http_host and domain-name markers are matched against.

    `host` is the name to match: for CONNECT the target's host, otherwise the Host header's, and
    without a Host header the host of an absolute-form target; `port` is the port written beside
    that host (None when there is none or it is not a port number), since a url marker
    `host:port/path` names one. `path` is the target's path and query as sent; for an
    absolute-form target the part after the authority (`/` when empty, the path the server serves:
    RFC 9110 4.2.3); None for CONNECT, whose target is only an authority. `target_host` is the
    host named by the request target itself (absolute-form `http://h/...` or CONNECT's
    `h:port`), reported separately because a client can send a Host header that differs from it
    and the server (or a proxy) routes by the target (RFC 9112 3.2.2). `connect` tells the caller
    that a tunnel, usually TLS, follows once the proxy has answered.
    """

    host: str | None
    port: int | None
    path: str | None
    target_host: str | None
    connect: bool


class HttpRequestStream:
    """The requests of one HTTP/1.x connection, read from the client's bytes as they arrive.

    `feed` takes the client direction's bytes in order, in chunks of any size split anywhere, and
    returns the requests whose header block the chunk completed. `status` is NEED_MORE while the
    connection is HTTP and more bytes are wanted; NOT_HTTP, MALFORMED and TUNNEL are final, after
    which `feed` returns nothing and the caller stops feeding. Bodies are stepped over by their
    framing, so bytes inside a body are never taken for a request, whatever they look like.

    `overflowed` tells a MALFORMED stream whose header block outgrew MAX_HEADER_LEN (the bound on
    what is buffered) from one whose bytes broke the protocol.

    TUNNEL: the feed call that completes a CONNECT request returns it (`connect` True) with the
    requests before it, and `tunnel_offset` is the offset, in the bytes given to that call, where
    the tunnelled bytes start (their length when none came yet). Those bytes and all later ones
    are the tunnel's, usually a TLS ClientHello to be read as such.

    `gap()` tells the stream that bytes are missing (a hole in the sequence numbers the caller
    will not fill, or a connection picked up after its start). The stream then waits for a chunk
    whose first byte starts a request line; chunks that do not, and a head after the gap that
    turns out not to be a request, are discarded instead of ending the stream, since after a gap
    where the next request starts is unknown.
    """

    __slots__ = ("status", "tunnel_offset", "overflowed", "_limit", "_head", "_body", "_chunk_state", "_chunk_size", "_chunk_size_seen", "_resync")

    def __init__(self, limit: int = MAX_HEADER_LEN) -> None:
        """`limit`: the longest header block read (the probe's `[flows] handshake_buffer_bytes`)."""
        self.status = NEED_MORE
        self.tunnel_offset = 0
        self.overflowed = False
        self._limit = min(limit, MAX_HEADER_LEN)
        self._head = bytearray()  # an incomplete header block, never longer than the limit
        self._body = 0  # body or chunk-data bytes still to step over
        self._chunk_state = 0
        self._chunk_size = 0
        self._chunk_size_seen = False  # a hex digit of the current chunk size was read
        self._resync = False

    @property
    def buffered(self) -> int:
        """Bytes held of an incomplete header block (the caller charges them to its budget)."""
        return len(self._head)

    def feed(self, data: bytes | bytearray | memoryview) -> list[HttpRequest]:
        """Read the next client bytes; return the requests whose header block they completed."""
        if self.status != NEED_MORE or not data:
            return []
        try:
            return self._feed(bytes(data))  # bytes: the same object, when it is
        except Exception:  # pragma: no cover - defensive: _feed is written not to raise
            self._stop(MALFORMED)
            return []

    def gap(self) -> None:
        """Bytes were lost: drop what was buffered and resynchronise on a chunk starting a request."""
        if self.status == NEED_MORE:
            self._head = bytearray()
            self._body = 0
            self._chunk_state = 0
            self._resync = True

    def _feed(self, data: bytes) -> list[HttpRequest]:
        requests: list[HttpRequest] = []
        n = len(data)
        pos = 0
        if self._resync and not self._head and _request_line(data, 0, min(n, _METHOD_WINDOW))[0] == NOT_HTTP:
            return requests
        while pos < n and self.status == NEED_MORE:
            if self._body:
                step = min(self._body, n - pos)
                self._body -= step
                pos += step
            elif self._chunk_state:
                pos = self._chunked_body(data, pos, n)
            else:
                pos = self._request_head(data, pos, n, requests)
        return requests

    def _request_head(self, data: bytes, pos: int, n: int, requests: list[HttpRequest]) -> int:
        """Read a request head starting at `pos` (or continuing the buffered one); the new offset."""
        head = self._head
        old = len(head)
        buf: bytes | bytearray
        if old:
            head += data[pos : pos + self._limit - old]
            buf, start, scan = head, 0, max(0, old - 2)  # an empty line may straddle two chunks
        else:
            # RFC 9112 2.2: empty lines before a request line are ignored (old clients add CRLF
            # after a body).
            while data[pos] in b"\r\n":
                pos += 1
                if pos == n:
                    return n
            buf, start, scan = data, pos, pos
        limit = min(len(buf), start + self._limit)
        end = _head_end(buf, scan, limit)
        if end < 0:
            # Tell a stream that is not HTTP from an incomplete head before buffering it.
            if _request_line(buf, start, min(limit, start + _METHOD_WINDOW))[0] == NOT_HTTP:
                return self._not_a_request(NOT_HTTP, n)
            if limit - start >= self._limit:
                self.overflowed = not self._resync
                return self._not_a_request(MALFORMED, n)
            if not old:
                self._head = bytearray(data[pos:])
            return n
        status, target_start, target_stop, line_end = _request_line(buf, start, end)
        if status != DONE:
            return self._not_a_request(NOT_HTTP, n)
        request, fields = _request(buf, start, target_start, target_stop, line_end, end)
        if old:
            self._head = bytearray()
            pos += end - old
        else:
            pos = end
        self._resync = False
        requests.append(request)
        if request.connect:
            self.status = TUNNEL
            self.tunnel_offset = pos
            return pos
        framing = _framing(fields)
        if framing == _CHUNKED:
            self._start_chunk()
        elif framing == _BAD_FRAMING:
            # The body's end cannot be found (a server answers 400 and closes, RFC 9112 6.3).
            self._stop(MALFORMED)
        else:
            self._body = framing
        return pos

    def _not_a_request(self, status: int, n: int) -> int:
        """A head that is not a request: final, unless resynchronising after a gap, where it was
        only a guess and the rest of the chunk is discarded."""
        if self._resync:
            self._head = bytearray()
        else:
            self._stop(status)
        return n

    def _stop(self, status: int) -> None:
        self.status = status
        self._head = bytearray()

    def _start_chunk(self) -> None:
        self._chunk_state = _CHUNK_SIZE
        self._chunk_size = 0
        self._chunk_size_seen = False

    def _chunked_body(self, data: bytes, pos: int, n: int) -> int:
        """Step through the framing of a chunked body (RFC 9112 7.1); the new offset.

        Chunk data is counted in `_body` and stepped over by `_feed`; extensions and trailer
        fields are passed over up to their line end, never buffered.
        """
        state = self._chunk_state
        if state == _CHUNK_SIZE:
            stop = _HEX.match(data, pos).end()  # type: ignore[union-attr]  # zero or more: always matches
            if stop > pos:
                self._chunk_size_seen = True
                self._chunk_size = (self._chunk_size << (4 * (stop - pos))) | int(data[pos:stop], 16)
                if self._chunk_size > _MAX_CHUNK_SIZE:
                    self._stop(MALFORMED)
                    return n
                if stop == n:
                    return n
            if not self._chunk_size_seen or data[stop] not in _AFTER_CHUNK_SIZE:
                self._stop(MALFORMED)
                return n
            self._chunk_state = _CHUNK_SIZE_LINE
            return stop
        if state == _CHUNK_SIZE_LINE or state == _TRAILER_LINE:
            line_end = data.find(b"\n", pos)
            if line_end < 0:
                return n
            if state == _CHUNK_SIZE_LINE and self._chunk_size:
                self._body = self._chunk_size
                self._chunk_state = _CHUNK_DATA_END
            else:  # the last chunk (size 0) or a trailer field: trailer lines follow
                self._chunk_state = _TRAILER_START
            return line_end + 1
        byte = data[pos]
        if state == _TRAILER_START and byte != 0x0D and byte != 0x0A:
            self._chunk_state = _TRAILER_LINE
            return pos
        if byte == 0x0D and state == _CHUNK_DATA_END:
            self._chunk_state = _CHUNK_DATA_END_LF
        elif byte == 0x0D and state == _TRAILER_START:
            self._chunk_state = _TRAILER_END_LF
        elif byte != 0x0A:
            self._stop(MALFORMED)
            return n
        elif state == _CHUNK_DATA_END or state == _CHUNK_DATA_END_LF:
            self._start_chunk()
        else:  # the empty line after the trailer section ends the body
            self._chunk_state = 0
        return pos + 1


def _request_line(buf: bytes | bytearray, start: int, n: int) -> tuple[int, int, int, int]:
    """(status, target start, target end, offset after the line) of the request line at `start`,
    reading no further than `n`: DONE if complete, NEED_MORE if `n` cuts a possible request line
    short, else NOT_HTTP."""
    i = start
    while True:
        if i >= n:
            return NEED_MORE, 0, 0, 0
        c = buf[i]
        if c == 0x20:
            break
        if not (0x41 <= c <= 0x5A or c == 0x2D or c == 0x5F) or i - start >= MAX_METHOD_LEN:
            return NOT_HTTP, 0, 0, 0
        i += 1
    if i == start:
        return NOT_HTTP, 0, 0, 0
    target_start = _SPACES.match(buf, i, n).end()  # type: ignore[union-attr]  # zero or more: always matches
    if target_start >= n:
        return NEED_MORE, 0, 0, 0
    stop = _TARGET.match(buf, target_start, n).end()  # type: ignore[union-attr]  # zero or more: always matches
    if stop == target_start:
        return NOT_HTTP, 0, 0, 0
    if stop >= n:
        return NEED_MORE, 0, 0, 0
    if buf[stop] != 0x20:
        return NOT_HTTP, 0, 0, 0
    v = _SPACES.match(buf, stop, n).end()  # type: ignore[union-attr]  # zero or more: always matches
    version = buf[v : min(v + 8, n)]
    if len(version) < 8:
        if b"HTTP/1.1".startswith(version) or b"HTTP/1.0".startswith(version):
            return NEED_MORE, 0, 0, 0
        return NOT_HTTP, 0, 0, 0
    if version not in _VERSIONS:
        return NOT_HTTP, 0, 0, 0
    v += 8
    if v < n and buf[v] == 0x0D:
        v += 1
    if v >= n:
        return NEED_MORE, 0, 0, 0
    if buf[v] != 0x0A:
        return NOT_HTTP, 0, 0, 0
    return DONE, target_start, stop, v + 1


def _head_end(buf: bytes | bytearray, start: int, limit: int) -> int:
    """Offset just after the empty line ending a head, searching [start, limit); -1 if none.

    The head ends at the first empty line; both CRLF and bare LF line ends are accepted.
    """
    crlf = buf.find(b"\n\r\n", start, limit)
    lf = buf.find(b"\n\n", start, limit if crlf < 0 else crlf + 2)
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


def _request(buf: bytes | bytearray, start: int, target_start: int, target_stop: int, line_end: int, end: int) -> tuple[HttpRequest, bytes]:
    """The request of a complete, valid head, and its header lines lower-cased (for the framing).

    The header lines start with the request line's LF, so every field name follows a LF.
    """
    connect = buf.startswith(b"CONNECT ", start)
    target_host = target_port = path = None
    if connect:
        target_host, target_port = _authority(buf[target_start:target_stop])
    elif buf[target_start] in b"/*":
        path = buf[target_start:target_stop].decode("latin-1")
    else:
        scheme = _SCHEME.match(buf, target_start, target_stop)
        if scheme is None:
            path = buf[target_start:target_stop].decode("latin-1")
        else:
            authority_end = _AUTHORITY.match(buf, scheme.end(), target_stop).end()  # type: ignore[union-attr]  # zero or more: always matches
            authority = buf[scheme.end() : authority_end]
            target_host, target_port = _authority(authority[authority.rfind(b"@") + 1 :])
            path = buf[authority_end:target_stop].decode("latin-1")
            if path[:1] != "/":
                path = "/" + path

    fields = bytes(buf[line_end - 1 : end]).lower()
    header_host = header_port = None
    i = fields.find(b"\nhost:")
    if i >= 0:
        header_host, header_port = _authority(fields[i + 6 : fields.find(b"\n", i + 6)])

    # CONNECT is routed by its target, other requests by their Host header (RFC 9112 3.2).
    if target_host is not None if connect else header_host is None:
        return HttpRequest(target_host, target_port, path, target_host, connect), fields
    return HttpRequest(header_host, header_port, path, target_host, connect), fields


def _framing(fields: bytes) -> int:
    """How the body after a head ends (RFC 9112 6.3): its length, _CHUNKED or _BAD_FRAMING.

    Transfer-Encoding wins over Content-Length; a coding list not ending in chunked, or lengths
    that disagree or are not numbers, leave the body's end unknown: a server refuses such a
    request, and guessing would let a body be taken for requests (or requests hidden in a body).
    """
    codings = _field_values(fields, b"\ntransfer-encoding:")
    if codings:
        last = b",".join(codings).rsplit(b",", 1)[-1]
        return _CHUNKED if last.strip(b" \t\r") == b"chunked" else _BAD_FRAMING
    values = _field_values(fields, b"\ncontent-length:")
    if not values:
        return 0
    lengths = {length.strip(b" \t\r") for value in values for length in value.split(b",")}
    if len(lengths) != 1:
        return _BAD_FRAMING
    length = lengths.pop()
    if not length.isdigit() or len(length) > _MAX_CONTENT_LENGTH_DIGITS:
        return _BAD_FRAMING
    return int(length)


def _field_values(fields: bytes, name: bytes) -> list[bytes]:
    """Values of every `name` field line (`name` given as LF + lower-case name + ':')."""
    values = []
    i = fields.find(name)
    while i >= 0:
        start = i + len(name)
        stop = fields.find(b"\n", start)  # always found: the head ends with an empty line
        values.append(fields[start:stop])
        i = fields.find(name, stop)
    return values


def _authority(authority: bytes | bytearray) -> tuple[str | None, int | None]:
    """(host, port) of `host[:port]` / `[v6]:port`: host lower-cased, without trailing dot."""
    a = authority.strip(b" \t\r").lower()
    port: bytes | bytearray = b""
    host: bytes | bytearray
    if a[:1] == b"[":
        close = a.find(b"]")
        if close < 0:
            return None, None
        host = a[1:close]
        if a[close + 1 : close + 2] == b":":
            port = a[close + 2 :]
    else:
        colon = a.find(b":")
        # One colon separates a port; several mean an unbracketed IPv6 literal, kept whole.
        if colon >= 0 and a.find(b":", colon + 1) < 0:
            host, port = a[:colon], a[colon + 1 :]
        else:
            host = a
    if host[-1:] == b".":
        host = host[:-1]
    if not host:
        return None, None
    number = int(port) if port.isdigit() and len(port) <= 5 else 0
    return _text(host), number if 0 < number < 65536 else None


def _text(raw: bytes | bytearray) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
