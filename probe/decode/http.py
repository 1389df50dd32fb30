"""Host name of an HTTP/1.x request found at the start of a TCP client byte stream.

Requests are recognised by content, not by port: HTTP on odd ports and proxies are common, and
the first bytes decide cheaply (NOT_HTTP) for everything else. Only the host names a domain-name
marker is matched against are returned; the path, other headers and the body are never kept.

A request is accepted when it starts with a method token (upper-case letters, '-' or '_', at most
MAX_METHOD_LEN), one or more spaces, a request target without control characters, one or more
spaces and `HTTP/1.0` or `HTTP/1.1`, ending in CRLF or a bare LF (servers accept both, so a
client evading detection could use either). The header block must end, with an empty line, within
the first MAX_HEADER_LEN bytes.

Every function accepts any bytes-like object, never raises and does work bounded by
MAX_HEADER_LEN.

Name presentation: ASCII letters lower-cased, port and one trailing dot removed, IPv6 literals
without their brackets. Non-ASCII bytes are decoded as UTF-8 when valid, else as latin-1 so that
every byte survives as the code point of the same value.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = [
    "NOT_HTTP",
    "NEED_MORE",
    "DONE",
    "MALFORMED",
    "MAX_HEADER_LEN",
    "MAX_METHOD_LEN",
    "HttpRequest",
    "http_request_host",
]

NOT_HTTP = 0
NEED_MORE = 1
DONE = 2
MALFORMED = 3

# Request line plus headers. Common servers refuse beyond 8-16 KiB, so a longer head is not a
# request any server would act on, and the bound caps what a caller must buffer.
MAX_HEADER_LEN = 16384
# Longest registered methods (e.g. UPDATEREDIRECTREF, BASELINE-CONTROL) are 17 characters.
MAX_METHOD_LEN = 20

# A request-target is any run of bytes other than controls and space (RFC 9112 3.2 is stricter;
# raw UTF-8 is seen in the wild and accepted by servers, so it is accepted here too).
_TARGET = re.compile(rb"[^\x00-\x20\x7f]*")
_SPACES = re.compile(rb" *")
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://")
_AUTHORITY = re.compile(rb"[^/?#]*")
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")


class HttpRequest(NamedTuple):
    """Result of looking for an HTTP/1.x request head at the start of a client stream.

    `host` is the name to match: for CONNECT the target's host, otherwise the Host header's, and
    without a Host header the host of an absolute-form target. `target_host` is the host named by
    the request target itself (absolute-form `http://h/...` or CONNECT's `h:port`), reported
    separately because a client can send a Host header that differs from it and the server (or a
    proxy) routes by the target (RFC 9112 3.2.2). `connect` tells the caller that a tunnel, usually
    TLS, follows once the proxy has answered. `end` (DONE only, else 0) is the offset just after
    the empty line ending the head, where a body or the tunnelled bytes start.
    """

    status: int
    host: str | None
    connect: bool
    end: int
    target_host: str | None


_RESULT_NOT_HTTP = HttpRequest(NOT_HTTP, None, False, 0, None)
_RESULT_NEED_MORE = HttpRequest(NEED_MORE, None, False, 0, None)
_RESULT_MALFORMED = HttpRequest(MALFORMED, None, False, 0, None)


def http_request_host(stream: bytes | bytearray | memoryview) -> HttpRequest:
    """Find the host an HTTP/1.x request at the start of `stream` (the client's bytes) is for."""
    try:
        return _parse(_as_bytes(stream))
    except Exception:  # pragma: no cover - defensive: _parse is written not to raise
        return _RESULT_MALFORMED


def _as_bytes(data) -> bytes:
    # bytes.find and slicing-to-bytes are needed; nothing past the head limit is ever looked at.
    if type(data) is bytes:
        return data if len(data) <= MAX_HEADER_LEN else data[:MAX_HEADER_LEN]
    return bytes(data[:MAX_HEADER_LEN])


def _more(n: int) -> int:
    return MALFORMED if n >= MAX_HEADER_LEN else NEED_MORE


def _request_line(buf: bytes, n: int) -> tuple[int, int, int, int]:
    """(status, target start, target end, offset after the line); status DONE if complete."""
    i = 0
    while True:
        if i >= n:
            return NEED_MORE, 0, 0, 0
        c = buf[i]
        if c == 0x20:
            break
        if not (0x41 <= c <= 0x5A or c == 0x2D or c == 0x5F) or i >= MAX_METHOD_LEN:
            return NOT_HTTP, 0, 0, 0
        i += 1
    if i == 0:
        return NOT_HTTP, 0, 0, 0
    start = _SPACES.match(buf, i, n).end()
    if start >= n:
        return _more(n), 0, 0, 0
    stop = _TARGET.match(buf, start, n).end()
    if stop == start:
        return NOT_HTTP, 0, 0, 0
    if stop >= n:
        return _more(n), 0, 0, 0
    if buf[stop] != 0x20:
        return NOT_HTTP, 0, 0, 0
    v = _SPACES.match(buf, stop, n).end()
    version = buf[v : v + 8]
    if len(version) < 8:
        if b"HTTP/1.1".startswith(version) or b"HTTP/1.0".startswith(version):
            return _more(n), 0, 0, 0
        return NOT_HTTP, 0, 0, 0
    if version not in _VERSIONS:
        return NOT_HTTP, 0, 0, 0
    v += 8
    if v < n and buf[v] == 0x0D:
        v += 1
    if v >= n:
        return _more(n), 0, 0, 0
    if buf[v] != 0x0A:
        return NOT_HTTP, 0, 0, 0
    return DONE, start, stop, v + 1


def _parse(buf: bytes) -> HttpRequest:
    n = len(buf)
    status, t_start, t_stop, line_end = _request_line(buf, n)
    if status != DONE:
        if status == NOT_HTTP:
            return _RESULT_NOT_HTTP
        return _RESULT_NEED_MORE if status == NEED_MORE else _RESULT_MALFORMED

    # The head ends at the first empty line; searching from the request line's LF also finds an
    # empty header section. Both CRLF and bare LF line ends are accepted.
    head_start = line_end - 1
    crlf = buf.find(b"\n\r\n", head_start, MAX_HEADER_LEN)
    lf = buf.find(b"\n\n", head_start, MAX_HEADER_LEN)
    if crlf < 0 and lf < 0:
        return _RESULT_NEED_MORE if n < MAX_HEADER_LEN else _RESULT_MALFORMED
    if lf < 0 or 0 <= crlf < lf:
        end = crlf + 3
    else:
        end = lf + 2

    connect = buf.startswith(b"CONNECT ")
    target_host = None
    if connect:
        target_host = _authority_host(buf[t_start:t_stop])
    elif buf[t_start] not in b"/*":
        m = _SCHEME.match(buf, t_start, t_stop)
        if m is not None:
            authority = buf[m.end() : _AUTHORITY.match(buf, m.end(), t_stop).end()]
            at = authority.rfind(b"@")
            if at >= 0:
                authority = authority[at + 1 :]
            target_host = _authority_host(authority)

    header_host = None
    head = buf[head_start:end].lower()
    i = head.find(b"\nhost:")
    if i >= 0:
        j = head.find(b"\n", i + 6)  # always found: the head ends with an empty line
        header_host = _authority_host(head[i + 6 : j])

    if connect:
        host = target_host if target_host is not None else header_host
    else:
        host = header_host if header_host is not None else target_host
    return HttpRequest(DONE, host, connect, end, target_host)


def _authority_host(authority: bytes) -> str | None:
    """Host of `host[:port]` / `[v6]:port`, lower-cased, without port or trailing dot."""
    a = authority.strip(b" \t\r").lower()
    if a[:1] == b"[":
        close = a.find(b"]")
        if close < 0:
            return None
        h = a[1:close]
    else:
        colon = a.find(b":")
        # One colon separates a port; several mean an unbracketed IPv6 literal, kept whole.
        h = a[:colon] if colon >= 0 and a.find(b":", colon + 1) < 0 else a
    if h[-1:] == b".":
        h = h[:-1]
    return _text(h) if h else None


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
