"""The TLS ClientHello carried in the client's QUIC Initial packets (QUIC v1 and v2).

QUIC encrypts even its first packets, but Initial keys are derived from the Destination Connection
ID sent in the clear with a salt published per version (RFC 9001 5.2, RFC 9369 3.3): anyone on
the path can remove the protection, and so can the probe. A reader follows one client-to-server
UDP flow: it checks the first datagram cheaply (NOT_QUIC for anything but a long-header Initial of
a known version), removes header protection (AES-128-ECB mask), authenticates and decrypts each
Initial packet (AES-128-GCM, BAD_TAG when that fails) and puts the CRYPTO frames back in order.
A ClientHello with post-quantum key shares does not fit one packet, and clients (Chrome among
them) split and reorder their CRYPTO data on purpose, so the reassembly accepts any order,
duplicates and overlaps (the first copy of a byte wins, as in a server's stream buffer). As soon
as the data from offset 0 holds the whole first handshake message, that message is the result.

Only Initial packets are decrypted, and of their content only the CRYPTO bytes are kept until the
ClientHello is complete: the probe must not keep communication content. ACK frames are skipped,
other packet types (0-RTT, Handshake) are stepped over by their Length field, unread.

Bounds: a datagram above MAX_DATAGRAM is refused, at most MAX_COALESCED_PACKETS packets of one
datagram are looked at, a reader gives up after MAX_INITIAL_PACKETS Initial packets or
MAX_DATAGRAMS datagrams without a complete ClientHello, holds CRYPTO data below MAX_CRYPTO_BYTES
only (in at most MAX_FRAGMENTS pieces, never more bytes than arrived) and keeps the keys of at
most MAX_KEY_SETS connection IDs. Everything is released once the reader is finished.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator
from operator import itemgetter
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "NOT_QUIC",
    "NEED_MORE",
    "DONE",
    "MALFORMED",
    "BAD_TAG",
    "UNKNOWN_VERSION",
    "VERSION_1",
    "VERSION_2",
    "MAX_DATAGRAM",
    "MIN_INITIAL_DATAGRAM",
    "MAX_COALESCED_PACKETS",
    "MAX_INITIAL_PACKETS",
    "MAX_DATAGRAMS",
    "MAX_CRYPTO_BYTES",
    "MAX_FRAGMENTS",
    "MAX_KEY_SETS",
    "InitialKeys",
    "QuicInitialReader",
    "client_initial_keys",
    "looks_like_initial",
]

# The first four values mean what they mean in tls.py, so callers can treat both alike.
NOT_QUIC: Final = 0
NEED_MORE: Final = 1
DONE: Final = 2
MALFORMED: Final = 3
BAD_TAG: Final = 4
UNKNOWN_VERSION: Final = 5

VERSION_1: Final = 0x00000001
VERSION_2: Final = 0x6B3343CF

# UDP cannot carry more; anything larger is not a datagram from the wire.
MAX_DATAGRAM: Final = 65535
# RFC 9000 14.1: a client pads every datagram carrying an Initial to 1200 bytes and servers drop
# smaller ones, so a smaller first datagram cannot open a connection.
MIN_INITIAL_DATAGRAM: Final = 1200
# Real clients coalesce three packets at most (Initial, 0-RTT, Handshake).
MAX_COALESCED_PACKETS: Final = 16
# A ClientHello fits in one to three Initial packets, even with post-quantum key shares and
# retransmissions. A flow that needs more is not a handshake worth the decryption cost.
MAX_INITIAL_PACKETS: Final = 32
# Datagrams fed without completing the ClientHello (0-RTT ones included) before giving up, so
# a caller can release a reader whose flow lost the start of its handshake.
MAX_DATAGRAMS: Final = 64
# CRYPTO bytes beyond this offset are refused: a ClientHello is a few KB, and the bound caps
# what one reader holds.
MAX_CRYPTO_BYTES: Final = 65536
# Disjoint pieces of CRYPTO data held at once; splitting data into many tiny frames only serves
# to make reassembly expensive.
MAX_FRAGMENTS: Final = 64
# Initial keys of different Destination Connection IDs held by one reader: the client's first
# DCID, the one after a Retry, the server's connection ID it switches to. Any more are derived
# per packet and not kept.
MAX_KEY_SETS: Final = 4

_MAX_CID_LEN: Final = 20
_HEADER_FORM_AND_FIXED: Final = 0xC0
_TYPE_BITS: Final = 0x30
_RESERVED_BITS: Final = 0x0C
_PN_LENGTH_BITS: Final = 0x03
_SAMPLE_OFFSET: Final = 4  # the sample starts 4 bytes after the packet number field (RFC 9001 5.4.2)
_SAMPLE_LEN: Final = 16
_TAG_LEN: Final = 16
_HANDSHAKE_HEADER: Final = 4
_CLIENT_HELLO: Final = 1

_FRAME_PADDING: Final = 0x00
_FRAME_PING: Final = 0x01
_FRAME_ACK: Final = 0x02
_FRAME_ACK_ECN: Final = 0x03
_FRAME_CRYPTO: Final = 0x06

_NOT_PADDING: Final = re.compile(b"[^\x00]")


class _Version(NamedTuple):
    salt: bytes
    initial_type: int  # the long-header type bits of an Initial, in place (bits 4-5)
    retry_type: int
    key_label: bytes
    iv_label: bytes
    hp_label: bytes


# RFC 9001 5.2 and 5.1; RFC 9369 3.2, 3.3.1, 3.3.2.
_VERSIONS: Final = {
    VERSION_1: _Version(
        salt=bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
        initial_type=0x00,
        retry_type=0x30,
        key_label=b"quic key",
        iv_label=b"quic iv",
        hp_label=b"quic hp",
    ),
    VERSION_2: _Version(
        salt=bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
        initial_type=0x10,
        retry_type=0x00,
        key_label=b"quicv2 key",
        iv_label=b"quicv2 iv",
        hp_label=b"quicv2 hp",
    ),
}


class InitialKeys(NamedTuple):
    """Client Initial packet protection keys: AEAD key, IV and header protection key."""

    key: bytes
    iv: bytes
    hp: bytes


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context (RFC 8446 7.1).

    Every length QUIC Initial keys need is at most one SHA-256 output, so HKDF-Expand is a single
    HMAC over the HkdfLabel structure and the block counter 1.
    """
    full_label = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full_label),)) + full_label + b"\x00"
    return hmac.digest(secret, info + b"\x01", "sha256")[:length]


def client_initial_keys(version: int, dcid: bytes) -> InitialKeys:
    """Keys protecting the client's Initial packets sent to `dcid` (KeyError: unknown version)."""
    spec = _VERSIONS[version]
    initial_secret = hmac.digest(spec.salt, dcid, "sha256")  # HKDF-Extract
    client_secret = _expand_label(initial_secret, b"client in", 32)
    return InitialKeys(
        _expand_label(client_secret, spec.key_label, 16),
        _expand_label(client_secret, spec.iv_label, 12),
        _expand_label(client_secret, spec.hp_label, 16),
    )


class _PacketKeys:
    """Ready-to-use cipher objects of one InitialKeys, so a DCID's setup is paid once."""

    __slots__ = ("version", "aead", "header_mask", "iv")

    def __init__(self, version: int, keys: InitialKeys) -> None:
        self.version = version
        self.aead = AESGCM(keys.key)
        # ECB has no chaining state: one encryptor serves every sample.
        self.header_mask = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
        self.iv = int.from_bytes(keys.iv, "big")


def looks_like_initial(payload: bytes | bytearray | memoryview) -> bool:
    """Whether a UDP payload may be a client's first QUIC datagram, before creating a reader.

    Long header with the fixed bit, a version this module decrypts, the Initial type of that
    version, a legal DCID length and the padded size every client Initial datagram has: ordinary
    UDP traffic (DNS, RTP, games) fails on the first byte or the version.
    """
    size = len(payload)
    if size < MIN_INITIAL_DATAGRAM or size > MAX_DATAGRAM:
        return False
    first = payload[0]
    if first & _HEADER_FORM_AND_FIXED != _HEADER_FORM_AND_FIXED:
        return False
    spec = _VERSIONS.get(int.from_bytes(payload[1:5], "big"))
    return spec is not None and first & _TYPE_BITS == spec.initial_type and payload[5] <= _MAX_CID_LEN


class _Malformed(Exception):
    """A length or varint that points past the data it describes."""


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """RFC 9000 16 variable-length integer at data[pos:end] -> (value, position after it)."""
    if pos >= end:
        raise _Malformed
    first = data[pos]
    size = 1 << (first >> 6)
    stop = pos + size
    if stop > end:
        raise _Malformed
    value = first & 0x3F
    for index in range(pos + 1, stop):
        value = (value << 8) | data[index]
    return value, stop


def _packet_number(largest: int, truncated: int, length: int) -> int:
    """Full packet number from its truncated encoding (RFC 9000 A.3).

    Initial packet numbers are small, but a client may use a 1-byte encoding past 255, and the
    nonce needs the full number.
    """
    expected = largest + 1
    window = 1 << (8 * length)
    half = window >> 1
    candidate = (expected & ~(window - 1)) | truncated
    if candidate <= expected - half and candidate < (1 << 62) - window:
        return candidate + window
    if candidate > expected + half and candidate >= window:
        return candidate - window
    return candidate


class QuicInitialReader:
    """The ClientHello of one QUIC connection, from the client's datagrams in capture order.

    `feed` returns NEED_MORE until the reader is finished; then it returns the final status, the
    same on every later call, without looking at the datagram: DONE (`client_hello` is set), or
    NOT_QUIC, UNKNOWN_VERSION, BAD_TAG (the first datagram; a later one that does not authenticate
    is skipped and counted in `rejected`) or MALFORMED. A finished reader has released its keys and
    buffers and should not be fed again: drop it.
    """

    __slots__ = (
        "client_hello",
        "status",
        "rejected",
        "_started",
        "_datagrams",
        "_initial_packets",
        "_largest_packet_number",
        "_fragments",
        "_keys",
    )

    def __init__(self) -> None:
        self.client_hello: bytes | None = None
        self.status = NEED_MORE
        self.rejected = 0
        """Datagrams that did not authenticate after one that did: skipped, the reading goes on."""
        self._started = False
        self._datagrams = 0
        self._initial_packets = 0
        self._largest_packet_number = -1
        # Disjoint (offset, data) pieces of the CRYPTO stream, sorted by offset, adjacent ones joined.
        self._fragments: list[tuple[int, bytes]] = []
        self._keys: dict[bytes, _PacketKeys] = {}

    @property
    def buffered_bytes(self) -> int:
        """CRYPTO bytes held while the ClientHello is incomplete (for memory accounting)."""
        return sum(len(data) for _, data in self._fragments)

    def feed(self, datagram: bytes | bytearray | memoryview) -> int:
        """Take the next UDP payload of the client; return the reader's status after it."""
        if self.status != NEED_MORE:
            return self.status
        try:
            status = self._feed(bytes(datagram))
        except Exception:  # a lying length or varint (_Malformed), or anything unforeseen
            status = MALFORMED
        if status == BAD_TAG and self._largest_packet_number >= 0:
            # Anyone who sees the flow can send a datagram that does not authenticate; the server
            # drops it, and so does the reader (MAX_DATAGRAMS still bounds the reading).
            self.rejected += 1
            return NEED_MORE
        if status != NEED_MORE:
            self.status = status
            self._fragments = []
            self._keys = {}
        return status

    def _feed(self, data: bytes) -> int:
        size = len(data)
        self._datagrams += 1
        if self._datagrams > MAX_DATAGRAMS or size > MAX_DATAGRAM:
            return MALFORMED
        if not self._started:
            if size < 6 or data[0] & _HEADER_FORM_AND_FIXED != _HEADER_FORM_AND_FIXED:
                return NOT_QUIC
            spec = _VERSIONS.get(int.from_bytes(data[1:5], "big"))
            if spec is None:
                return UNKNOWN_VERSION
            if data[0] & _TYPE_BITS != spec.initial_type:
                return NOT_QUIC
            self._started = True
        pos = 0
        for _ in range(MAX_COALESCED_PACKETS):
            # A short header (1-RTT) has no length and runs to the end; zero bytes after the last
            # packet are padding some clients add instead of PADDING frames.
            if pos >= size or data[pos] & _HEADER_FORM_AND_FIXED != _HEADER_FORM_AND_FIXED:
                break
            if pos + 6 > size:
                return MALFORMED
            version = int.from_bytes(data[pos + 1 : pos + 5], "big")
            spec = _VERSIONS.get(version)
            if spec is None:
                if pos == 0:
                    return UNKNOWN_VERSION
                break  # bytes after the last packet that happen to look like a long header
            packet_type = data[pos] & _TYPE_BITS
            if packet_type == spec.retry_type:
                break  # only servers send Retry, and it has no Length field to step over
            dcid_len = data[pos + 5]
            dcid_end = pos + 6 + dcid_len
            if dcid_len > _MAX_CID_LEN or dcid_end >= size:
                return MALFORMED
            scid_len = data[dcid_end]
            field = dcid_end + 1 + scid_len
            if scid_len > _MAX_CID_LEN:
                return MALFORMED
            if packet_type == spec.initial_type:
                token_len, field = _varint(data, field, size)
                field += token_len
            length, number_offset = _varint(data, field, size)
            end = number_offset + length
            if end > size:
                return MALFORMED
            if packet_type == spec.initial_type:
                status = self._open(data, pos, number_offset, end, version, data[pos + 6 : dcid_end])
                if status != NEED_MORE:
                    return status
            pos = end
        return NEED_MORE

    def _candidate_keys(self, version: int, dcid: bytes) -> Iterator[_PacketKeys]:
        """Keys of the packet's own DCID first, then the other DCIDs' keys of the same version.

        After a Retry the client derives new keys from the new DCID, but when it switches to the
        server's connection ID it keeps the keys of its first DCID (RFC 9001 5.2).
        """
        cache_key = version.to_bytes(4, "big") + dcid
        keys = self._keys.get(cache_key)
        if keys is None:
            keys = _PacketKeys(version, client_initial_keys(version, dcid))
            if len(self._keys) < MAX_KEY_SETS:
                self._keys[cache_key] = keys
        yield keys
        for other in list(self._keys.values()):
            if other is not keys and other.version == version:
                yield other

    def _open(self, data: bytes, start: int, number_offset: int, end: int, version: int, dcid: bytes) -> int:
        """Remove the protection of the Initial packet data[start:end] and read its frames."""
        self._initial_packets += 1
        if self._initial_packets > MAX_INITIAL_PACKETS:
            return MALFORMED
        sample_offset = number_offset + _SAMPLE_OFFSET
        if sample_offset + _SAMPLE_LEN > end:
            return MALFORMED  # too short for a sample, so too short for a packet number and tag
        sample = data[sample_offset : sample_offset + _SAMPLE_LEN]
        for keys in self._candidate_keys(version, dcid):
            mask = keys.header_mask.update(sample)
            first = data[start] ^ (mask[0] & 0x0F)
            number_len = (first & _PN_LENGTH_BITS) + 1
            payload_offset = number_offset + number_len
            masked_number = int.from_bytes(data[number_offset:payload_offset], "big")
            truncated = masked_number ^ int.from_bytes(mask[1 : 1 + number_len], "big")
            header = bytes((first,)) + data[start + 1 : number_offset] + truncated.to_bytes(number_len, "big")
            packet_number = _packet_number(self._largest_packet_number, truncated, number_len)
            nonce = (keys.iv ^ packet_number).to_bytes(12, "big")
            try:
                payload = keys.aead.decrypt(nonce, data[payload_offset:end], header)
            except InvalidTag:
                continue
            if first & _RESERVED_BITS:
                return MALFORMED  # RFC 9000 17.2: a server closes the connection on these
            if packet_number > self._largest_packet_number:
                self._largest_packet_number = packet_number
            return self._read_frames(payload)
        return BAD_TAG

    def _read_frames(self, payload: bytes) -> int:
        """Take the CRYPTO frames of a decrypted Initial payload, then check for a ClientHello."""
        size = len(payload)
        pos = 0
        while pos < size:
            frame_type = payload[pos]
            pos += 1
            if frame_type == _FRAME_PADDING:
                match = _NOT_PADDING.search(payload, pos)
                pos = match.start() if match else size
            elif frame_type == _FRAME_PING:
                continue
            elif frame_type == _FRAME_ACK or frame_type == _FRAME_ACK_ECN:
                _, pos = _varint(payload, pos, size)  # largest acknowledged
                _, pos = _varint(payload, pos, size)  # ack delay
                range_count, pos = _varint(payload, pos, size)
                _, pos = _varint(payload, pos, size)  # first range
                if range_count > (size - pos) // 2:
                    return MALFORMED  # each gap and range takes a byte at least
                fields = 2 * range_count + (3 if frame_type == _FRAME_ACK_ECN else 0)
                for _ in range(fields):
                    _, pos = _varint(payload, pos, size)
            elif frame_type == _FRAME_CRYPTO:
                offset, pos = _varint(payload, pos, size)
                length, pos = _varint(payload, pos, size)
                stop = pos + length
                if stop > size or offset + length > MAX_CRYPTO_BYTES:
                    return MALFORMED
                if length and not self._store(offset, payload[pos:stop]):
                    return MALFORMED
                pos = stop
            else:
                # CONNECTION_CLOSE ends what the packet says; any other frame is not allowed in
                # an Initial (RFC 9000 12.4) and its length is unknown, so reading stops here.
                break
        return self._client_hello_status()

    def _store(self, offset: int, data: bytes) -> bool:
        """Merge one CRYPTO frame into the fragments; False when that makes too many of them.

        Bytes already held keep their value (first copy wins); overlapping and adjacent pieces
        become one, so in-order data costs one fragment however many frames carried it.
        """
        end = offset + len(data)
        kept: list[tuple[int, bytes]] = []
        pieces: list[bytes] = []
        joined_start = offset
        cursor = offset  # the next byte of the new data not yet covered or taken
        for start, chunk in self._fragments:
            stop = start + len(chunk)
            if stop < offset or start > end:
                kept.append((start, chunk))
                continue
            if not pieces:
                joined_start = min(start, offset)
            if cursor < start:
                pieces.append(data[cursor - offset : start - offset])
            pieces.append(chunk)
            cursor = max(cursor, stop)
        if cursor < end:
            pieces.append(data[cursor - offset :])
        kept.append((joined_start, b"".join(pieces)))
        if len(kept) > MAX_FRAGMENTS:
            return False
        kept.sort(key=itemgetter(0))
        self._fragments = kept
        return True

    def _client_hello_status(self) -> int:
        if not self._fragments or self._fragments[0][0] != 0:
            return NEED_MORE
        prefix = self._fragments[0][1]
        if prefix[0] != _CLIENT_HELLO:
            return MALFORMED  # a client's first handshake message is its ClientHello
        if len(prefix) < _HANDSHAKE_HEADER:
            return NEED_MORE
        total = _HANDSHAKE_HEADER + int.from_bytes(prefix[1:_HANDSHAKE_HEADER], "big")
        if total > MAX_CRYPTO_BYTES:
            return MALFORMED
        if len(prefix) < total:
            return NEED_MORE
        self.client_hello = prefix[:total]
        return DONE
