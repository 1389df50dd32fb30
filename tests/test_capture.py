"""Capture readers: classic pcap and pcapng variants, compression, stdin, chunking, damage."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import subprocess
import sys
import types
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import pytest

from probe.capture import reader
from probe.capture.reader import open_capture, read_capture
from probe.errors import CaptureError

PROJECT_ROOT = Path(__file__).parents[1]
SHARED_CAPTURES = Path(__file__).parents[2] / "shared" / "captures"
LINKTYPES = {
    "ether": 1,
    "linux-sll": 113,
    "linux-sll2": 276,
    "null": 0,
    "rawip": 101,
    "ether-mpacket": 274,
}

BILLION = 1_000_000_000
EPOCH = 1_700_000_000


class Frame(NamedTuple):
    data: bytes
    wirelen: int
    timestamp: int
    linktype: int


# --- capture builders -------------------------------------------------------------------------


def pcap_bytes(
    records: list[tuple[int, int, bytes, int]],
    order: str = "<",
    nano: bool = False,
    linktype: int = 1,
    snaplen: int = 65535,
) -> bytes:
    """records: (seconds, fraction, captured bytes, wire length)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for seconds, fraction, data, wirelen in records:
        out.append(struct.pack(order + "IIII", seconds, fraction, len(data), wirelen) + data)
    return b"".join(out)


def pcap_record(data: bytes, order: str = "<", caplen: int | None = None) -> bytes:
    length = len(data) if caplen is None else caplen
    return struct.pack(order + "IIII", EPOCH, 0, length, length) + data


def block(order: str, block_type: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def shb(order: str) -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(order: str, linktype: int, options: list[tuple[int, bytes]] = ()) -> bytes:
    body = struct.pack(order + "HHI", linktype, 0, 0)
    for code, value in options:
        body += struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)
    if options:
        body += struct.pack(order + "HH", 0, 0)
    return block(order, 1, body)


def epb(order: str, interface: int, units: int, data: bytes, wirelen: int | None = None) -> bytes:
    high, low = units >> 32, units & 0xFFFFFFFF
    header = struct.pack(order + "5I", interface, high, low, len(data), wirelen or len(data))
    return block(order, 6, header + data)


def packet_block(order: str, interface: int, units: int, data: bytes) -> bytes:
    high, low = units >> 32, units & 0xFFFFFFFF
    header = struct.pack(order + "HHIIII", interface, 0, high, low, len(data), len(data))
    return block(order, 2, header + data)


def spb(order: str, data: bytes, wirelen: int) -> bytes:
    return block(order, 3, struct.pack(order + "I", wirelen) + data)


def payload(size: int, seed: int) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(size))


# --- reading helpers --------------------------------------------------------------------------


def frames_of(batches) -> list[Frame]:
    frames = []
    for batch in batches:
        assert batch.offsets.dtype == batch.timestamps.dtype == batch.linktypes.dtype == "int64"
        columns = zip(
            batch.offsets.tolist(),
            batch.caplens.tolist(),
            batch.wirelens.tolist(),
            batch.timestamps.tolist(),
            batch.linktypes.tolist(),
        )
        for offset, caplen, wirelen, timestamp, linktype in columns:
            frames.append(Frame(batch.data[offset : offset + caplen], wirelen, timestamp, linktype))
    return frames


def read_until_error(path: str) -> tuple[list[Frame], CaptureError | None]:
    """All frames a capture yields and the error that ended it, if any."""
    batches = []
    try:
        for batch in read_capture(path):
            batches.append(batch)
    except CaptureError as exc:
        return frames_of(batches), exc
    return frames_of(batches), None


def write(tmp_path: Path, content: bytes, name: str = "capture") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def read_all(path: str) -> list[Frame]:
    frames, error = read_until_error(path)
    assert error is None, error
    return frames


class Pipe(io.RawIOBase):
    """A non-seekable stream handing out its bytes in small, uneven pieces, like a pipe."""

    def __init__(self, content: bytes) -> None:
        self._content = content
        self._position = 0
        self._piece = 1

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._piece = self._piece * 3 % 1001 + 1
        piece = self._content[self._position : self._position + min(len(buffer), self._piece)]
        buffer[: len(piece)] = piece
        self._position += len(piece)
        return len(piece)


def use_stdin(monkeypatch: pytest.MonkeyPatch, stream: io.IOBase) -> None:
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=stream))


# --- classic pcap -----------------------------------------------------------------------------

PCAP_RECORDS = [
    (EPOCH, 123_456, payload(60, 1), 60),
    (EPOCH + 1, 999_999, payload(1514, 2), 1514),
    (EPOCH + 2, 0, payload(96, 3), 1500),  # cut by the snap length
    (EPOCH + 3, 5, b"", 0),
]
FILE_MAGICS = {  # (byte order, nanosecond) -> the file's first bytes
    ("<", False): "d4c3b2a1",
    (">", False): "a1b2c3d4",
    ("<", True): "4d3cb2a1",
    (">", True): "a1b23c4d",
}


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True], ids=["usec", "nsec"])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, order: str, nano: bool) -> None:
    records = [(s, f * 1000 + 789 if nano else f, d, w) for s, f, d, w in PCAP_RECORDS]
    content = pcap_bytes(records, order=order, nano=nano, linktype=113)
    assert content[:4].hex() == FILE_MAGICS[order, nano]
    path = write(tmp_path, content)

    frames = read_all(path)

    expected = [
        Frame(data, wirelen, seconds * BILLION + (fraction if nano else fraction * 1000), 113)
        for seconds, fraction, data, wirelen in records
    ]
    assert frames == expected
    if nano:
        assert frames[0].timestamp == 1_700_000_000_123_456_789


def test_pcap_linktype_ignores_fcs_bits(tmp_path: Path) -> None:
    fcs_present_4_bytes = 0x10000000 | 0x04000000 | 0x02000000
    path = write(tmp_path, pcap_bytes(PCAP_RECORDS[:1], linktype=1 | fcs_present_4_bytes))
    assert [frame.linktype for frame in read_all(path)] == [1]


def test_pcap_written_by_scapy(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    packets = []
    for index in range(5):
        ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")  # else scapy sends ARP requests
        packet = ether / IP(dst=f"192.0.2.{index}") / UDP(dport=53) / payload(index * 100, index)
        packet.time = Decimal(EPOCH + index) + Decimal("0.000000123") * index
        packets.append(packet)
    for nano in (False, True):
        path = tmp_path / f"scapy-{nano}.pcap"
        wrpcap(str(path), packets, nano=nano)
        frames = read_all(str(path))
        assert [frame.data for frame in frames] == [bytes(packet) for packet in packets]
        resolution = 1 if nano else 1000
        assert [frame.timestamp for frame in frames] == [
            int(packet.time * BILLION) // resolution * resolution for packet in packets
        ]


def test_header_only_pcap_yields_nothing(tmp_path: Path) -> None:
    assert read_all(write(tmp_path, pcap_bytes([]))) == []


# --- pcapng -----------------------------------------------------------------------------------


def test_pcapng_interfaces_sections_and_block_kinds(tmp_path: Path) -> None:
    tsresol, tsoffset = 9, 14
    first = [
        shb("<"),
        idb("<", 1),  # default resolution: microseconds
        idb("<", 113, [(2, b"eth1\0"), (tsresol, bytes([9]))]),
        idb("<", 101, [(tsresol, bytes([0x80 | 10])), (tsoffset, struct.pack("<q", 100))]),
        idb("<", 276, [(tsresol, bytes([12]))]),
        block("<", 0x00000BAD, b"custom block nobody knows"),
        epb("<", 0, EPOCH * 10**6 + 123_456, payload(60, 1)),
        epb("<", 1, EPOCH * BILLION + 987_654_321, payload(1514, 2), wirelen=1600),
        block("<", 5, struct.pack("<III", 0, 0, 0)),  # interface statistics
        epb("<", 2, EPOCH * 1024 + 512, payload(33, 3)),
        epb("<", 3, 5_123_456_789_012, payload(7, 4)),
        spb("<", payload(42, 5), 42),
        packet_block("<", 1, EPOCH * BILLION + 1, payload(64, 6)),
    ]
    second = [
        shb(">"),  # a new section forgets the interfaces above
        idb(">", 0),
        spb(">", payload(100, 7), 1000),  # wire length beyond the block: captured length from the block
        block(">", 4, b"\0" * 4),  # name resolution
        epb(">", 0, EPOCH * 10**6 + 1, payload(20, 8)),
    ]
    path = write(tmp_path, b"".join(first + second), "multi.pcapng")

    with open_capture(path) as capture:
        assert capture.format == "pcapng"
        frames = frames_of(capture)

    assert frames == [
        Frame(payload(60, 1), 60, EPOCH * BILLION + 123_456_000, 1),
        Frame(payload(1514, 2), 1600, EPOCH * BILLION + 987_654_321, 113),
        Frame(payload(33, 3), 33, (EPOCH + 100) * BILLION + 500_000_000, 101),
        Frame(payload(7, 4), 7, 5_123_456_789, 276),
        Frame(payload(42, 5), 42, 5_123_456_789, 1),  # simple packet: previous timestamp, interface 0
        Frame(payload(64, 6), 64, EPOCH * BILLION + 1, 113),
        Frame(payload(100, 7), 1000, EPOCH * BILLION + 1, 0),
        Frame(payload(20, 8), 20, EPOCH * BILLION + 1000, 0),
    ]


def test_pcapng_simple_packet_first_has_timestamp_zero_and_drops_padding(tmp_path: Path) -> None:
    content = shb("<") + idb("<", 1) + spb("<", payload(61, 1), 61)
    assert read_all(write(tmp_path, content)) == [Frame(payload(61, 1), 61, 0, 1)]


def test_pcapng_written_by_scapy(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import CookedLinux, Ether
    from scapy.utils import PcapNgWriter

    packets = [
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP() / TCP(),
        CookedLinux() / IP() / TCP(dport=443),
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP() / TCP(dport=80) / b"GET / HTTP/1.1\r\n\r\n",
    ]
    for index, packet in enumerate(packets):
        packet.time = Decimal(EPOCH + index) + Decimal("0.25")
        packet.sniffed_on = "any" if isinstance(packet, CookedLinux) else "eth0"  # one interface each
    path = tmp_path / "scapy.pcapng"
    with PcapNgWriter(str(path)) as writer:
        for packet in packets:
            writer.write(packet)

    frames = read_all(str(path))
    assert [frame.data for frame in frames] == [bytes(packet) for packet in packets]
    assert [frame.linktype for frame in frames] == [1, 113, 1]
    assert [frame.timestamp for frame in frames] == [(EPOCH + i) * BILLION + BILLION // 4 for i in range(3)]


def test_pcapng_section_resets_interfaces(tmp_path: Path) -> None:
    good = shb("<") + idb("<", 1) + idb("<", 1) + epb("<", 1, 0, payload(10, 1))
    second = shb("<") + idb("<", 1)
    path = write(tmp_path, good + second + epb("<", 1, 0, payload(10, 2)))

    frames, error = read_until_error(path)

    assert [frame.data for frame in frames] == [payload(10, 1)]
    assert error is not None and error.offset == len(good) + len(second)
    assert "interface 1" in error.problem


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda b: b[:4] + struct.pack("<I", 30) + b[8:], "length 30"),
        (lambda b: b[:4] + struct.pack("<I", 8) + b[8:], "length 8"),
        (lambda b: b[:-4] + struct.pack("<I", len(b) + 4), "trailing length"),
        (lambda b: b[:20] + struct.pack("<I", 3_000_000) + b[24:], "captured length 3000000"),
        (lambda b: b[:20] + struct.pack("<I", 80) + b[24:], "overruns"),
    ],
    ids=["not-multiple-of-4", "too-short", "trailing-mismatch", "huge-caplen", "caplen-overruns-block"],
)
def test_pcapng_corrupt_blocks(tmp_path: Path, damage, problem: str) -> None:
    good = shb("<") + idb("<", 1) + epb("<", 0, 0, payload(40, 1))
    bad = damage(epb("<", 0, 0, payload(40, 2)))
    path = write(tmp_path, good + bad + epb("<", 0, 0, payload(40, 3)))

    frames, error = read_until_error(path)

    assert [frame.data for frame in frames] == [payload(40, 1)]
    assert error is not None and error.offset == len(good)
    assert problem in error.problem


def test_pcapng_cut_short(tmp_path: Path) -> None:
    good = shb("<") + idb("<", 1) + epb("<", 0, 0, payload(40, 1))
    path = write(tmp_path, good + epb("<", 0, 0, payload(40, 2))[:30])

    frames, error = read_until_error(path)

    assert len(frames) == 1
    assert error is not None and error.offset == len(good)
    assert error.problem == "capture cut short: block header says 72 bytes but only 30 remain"


# --- chunking ---------------------------------------------------------------------------------

MIXED_SIZES = [60, 1514, 5000, 0, 77, 9000, 1, 300] * 3  # several records larger than a chunk


def test_pcap_larger_than_a_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "CHUNK_SIZE", 1000)
    records = [(EPOCH + i, i, payload(size, i), size) for i, size in enumerate(MIXED_SIZES)]
    path = write(tmp_path, pcap_bytes(records))

    batches = list(read_capture(path))

    assert len(batches) > 10
    assert frames_of(batches) == [Frame(d, w, s * BILLION + f * 1000, 1) for s, f, d, w in records]


def test_pcapng_larger_than_a_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "CHUNK_SIZE", 1000)
    blocks = [epb("<", 0, i, payload(size, i)) for i, size in enumerate(MIXED_SIZES)]
    path = write(tmp_path, shb("<") + idb("<", 1) + b"".join(blocks))

    batches = list(read_capture(path))

    assert len(batches) > 10
    expected = [Frame(payload(size, i), size, i * 1000, 1) for i, size in enumerate(MIXED_SIZES)]
    assert frames_of(batches) == expected


def test_pipe_larger_than_a_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that cannot seek carries the partial record over by copying it."""
    monkeypatch.setattr(reader, "CHUNK_SIZE", 1000)
    records = [(EPOCH, i, payload(size, i), size) for i, size in enumerate(MIXED_SIZES)]
    use_stdin(monkeypatch, io.BufferedReader(Pipe(pcap_bytes(records))))

    frames = read_all("-")

    assert frames == [Frame(d, w, s * BILLION + f * 1000, 1) for s, f, d, w in records]


# --- compression and standard input -------------------------------------------------------------


def test_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    plain = pcap_bytes(PCAP_RECORDS)
    ng = shb("<") + idb("<", 1) + epb("<", 0, 7, payload(99, 1))
    assert read_all(write(tmp_path, gzip.compress(plain), "capture.pcap")) == read_all(write(tmp_path, plain))
    assert read_all(write(tmp_path, gzip.compress(ng), "capture")) == [Frame(payload(99, 1), 99, 7000, 1)]


def test_gzip_larger_than_a_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "CHUNK_SIZE", 1000)
    records = [(EPOCH, i, payload(size, i), size) for i, size in enumerate(MIXED_SIZES)]
    frames = read_all(write(tmp_path, gzip.compress(pcap_bytes(records))))
    assert [frame.data for frame in frames] == [data for _, _, data, _ in records]


def test_truncated_gzip_delivers_frames_before_the_cut(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(reader, "CHUNK_SIZE", 4096)
    records = [(EPOCH, i, payload(200 + i, i), 200 + i) for i in range(400)]
    compressed = gzip.compress(pcap_bytes(records), compresslevel=1)
    path = write(tmp_path, compressed[: len(compressed) // 2])

    frames, error = read_until_error(path)

    assert 0 < len(frames) < len(records)
    assert [frame.data for frame in frames] == [data for _, _, data, _ in records[: len(frames)]]
    assert error is not None and "gzip" in error.problem
    assert error.offset == 24 + sum(16 + len(frame.data) for frame in frames)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_stdin(monkeypatch: pytest.MonkeyPatch, compress: bool) -> None:
    content = pcap_bytes(PCAP_RECORDS, order=">", nano=True)
    use_stdin(monkeypatch, io.BytesIO(gzip.compress(content) if compress else content))
    assert [frame.data for frame in read_all("-")] == [data for _, _, data, _ in PCAP_RECORDS]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_stdin_pipe_in_subprocess(compress: bool) -> None:
    content = shb("<") + idb("<", 1) + b"".join(epb("<", 0, i, payload(500, i)) for i in range(50))
    script = (
        "from probe.capture.reader import read_capture\n"
        "print(sum(len(batch) for batch in read_capture('-')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=gzip.compress(content) if compress else content,
        capture_output=True,
        cwd=PROJECT_ROOT,
        check=True,
    )
    assert result.stdout.strip() == b"50"


# --- damaged and unusable files -----------------------------------------------------------------


def test_pcap_cut_short_in_data(tmp_path: Path) -> None:
    good = pcap_bytes(PCAP_RECORDS[:2])
    path = write(tmp_path, good + pcap_record(payload(1514, 9))[: 16 + 300])

    frames, error = read_until_error(path)

    assert [frame.data for frame in frames] == [data for _, _, data, _ in PCAP_RECORDS[:2]]
    assert error is not None and error.offset == len(good)
    assert error.problem == "capture cut short: record header says 1514 bytes but only 300 remain"


def test_pcap_cut_short_in_record_header(tmp_path: Path) -> None:
    good = pcap_bytes(PCAP_RECORDS)
    frames, error = read_until_error(write(tmp_path, good + pcap_record(b"x")[:5]))
    assert len(frames) == len(PCAP_RECORDS)
    assert error is not None and error.offset == len(good)
    assert "record header has only 5 of 16 bytes" in error.problem


@pytest.mark.parametrize("chunk_size", [reader.CHUNK_SIZE, 100])
def test_pcap_corrupt_caplen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_size: int) -> None:
    monkeypatch.setattr(reader, "CHUNK_SIZE", chunk_size)
    good = pcap_bytes(PCAP_RECORDS)
    bad = pcap_record(payload(40, 1), caplen=3_000_000)
    path = write(tmp_path, good + bad + pcap_record(payload(3000, 2)))

    frames, error = read_until_error(path)

    assert len(frames) == len(PCAP_RECORDS)
    assert error is not None and error.offset == len(good)
    assert error.problem == "corrupt record: captured length 3000000 exceeds 131071"


def test_pcap_caplen_far_above_snaplen_is_corrupt(tmp_path: Path) -> None:
    """The record is complete in the buffer, so the vectorised check has to catch it."""
    good = pcap_bytes(PCAP_RECORDS[:1], snaplen=96)
    path = write(tmp_path, good + pcap_record(payload(70_000, 1)) + pcap_record(payload(50, 2)))

    frames, error = read_until_error(path)

    assert len(frames) == 1
    assert error is not None and error.offset == len(good)
    assert "captured length 70000 exceeds" in error.problem


def test_pcap_ending_at_record_boundary_is_fine(tmp_path: Path) -> None:
    assert len(read_all(write(tmp_path, pcap_bytes(PCAP_RECORDS)))) == len(PCAP_RECORDS)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty file"),
        (b"\xd4\xc3", "truncated file header"),
        (pcap_bytes([])[:20], "truncated file header"),
        (shb("<")[:20], "truncated file header"),
        (gzip.compress(b""), "empty file"),
        (gzip.compress(pcap_bytes([])[:10]), "truncated file header"),
        (b"\x7fELF\x02\x01\x01\0", "not a pcap or pcapng capture (magic 7f454c46)"),
    ],
    ids=["empty", "short-magic", "pcap-header", "pcapng-header", "empty-gzip", "gzip-header", "elf"],
)
def test_unusable_files(tmp_path: Path, content: bytes, problem: str) -> None:
    with pytest.raises(CaptureError) as caught:
        open_capture(write(tmp_path, content))
    assert caught.value.problem == problem
    assert caught.value.offset == 0


@pytest.mark.parametrize(
    ("name", "reason"), [("nowhere.pcap", "No such file or directory"), (".", "Is a directory")]
)
def test_unreadable_path(tmp_path: Path, name: str, reason: str) -> None:
    path = str(tmp_path / name)
    with pytest.raises(CaptureError) as caught:
        list(read_capture(path))
    assert (caught.value.path, caught.value.offset, caught.value.problem) == (path, 0, reason)


def test_reader_closes_file_when_left_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "CHUNK_SIZE", 1000)
    records = [(EPOCH, i, payload(size, i), size) for i, size in enumerate(MIXED_SIZES)]
    with open_capture(write(tmp_path, pcap_bytes(records))) as capture:
        assert capture.format == "pcap"
        next(iter(capture))
    assert capture._file.closed


# --- the shared corpus of real captures ---------------------------------------------------------


def shared_captures() -> list[Path]:
    if not SHARED_CAPTURES.is_dir():
        return []
    return sorted(path for path in SHARED_CAPTURES.iterdir() if path.suffix in (".pcap", ".pcapng"))


def require_shared_captures() -> None:
    if not SHARED_CAPTURES.is_dir():
        pytest.skip(f"shared capture corpus not found at {SHARED_CAPTURES}")


def truth(capture: Path) -> dict:
    return json.loads((SHARED_CAPTURES / "truth" / f"{capture.name}.json").read_text())


@pytest.mark.parametrize("capture", shared_captures() or [None], ids=lambda path: getattr(path, "name", "absent"))
def test_shared_capture_counts_and_link_types(capture: Path | None) -> None:
    require_shared_captures()
    expected = truth(capture)

    frames, error = read_until_error(str(capture))

    assert len(frames) == expected["packets"]
    link_types = {LINKTYPES[name] for name in expected["link_types"]}
    if capture.suffix == ".pcap":
        assert {frame.linktype for frame in frames} == link_types
    else:  # pcapng truth lists every described interface; frames use some of them
        assert {frame.linktype for frame in frames} <= link_types
    if capture.name == "corrupt-cut-short-http-large.pcap":
        assert error is not None and "cut short" in error.problem
        assert error.offset < capture.stat().st_size
    else:
        assert error is None


def test_shared_corrupt_capture_stops_after_2696_frames() -> None:
    require_shared_captures()
    capture = SHARED_CAPTURES / "corrupt-cut-short-http-large.pcap"
    frames, error = read_until_error(str(capture))
    assert len(frames) == 2696
    assert error is not None
    assert error.offset == capture.stat().st_size - 1  # one stray byte after the last whole record
    assert error.problem == "capture cut short: record header has only 1 of 16 bytes"


@pytest.mark.parametrize(
    "name",
    [
        "bigendian.pcap",
        "nsec-tcp-handshake.pcap",
        "snaplen96-truncated-http.pcap",
        "pcapng-22-interfaces-tls.pcapng",
        "pcapng-multi-idb-linktypes-vlan-ipv6.pcapng",
    ],
)
def test_shared_capture_matches_tshark(name: str) -> None:
    require_shared_captures()
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    capture = SHARED_CAPTURES / name
    fields = ["-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.cap_len"]
    listing = subprocess.run(
        [tshark, "-r", capture, "-T", "fields", *fields],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = []
    for line in listing.splitlines():
        time_epoch, wirelen, caplen = line.split("\t")
        expected.append((int(Decimal(time_epoch) * BILLION), int(wirelen), int(caplen)))

    frames = read_all(str(capture))

    assert [(frame.timestamp, frame.wirelen, len(frame.data)) for frame in frames] == expected
