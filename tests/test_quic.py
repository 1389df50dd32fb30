"""QUIC Initial decryption: the client's ClientHello from v1 and v2 Initial packets.

The RFC test vectors and the shared real captures prove the cryptography (a wrong key, nonce or
header byte fails the GCM tag, so a DONE is proof of every step). The packets built here by a
test-side encryptor cover what real captures rarely show: ClientHellos split over packets and
datagrams in any order, overlapping retransmissions, lying lengths, hostile bounds. Fuzzing calls
the internal parsers directly, past `feed`'s safety net, so a bug shows up as an exception
instead of a silent MALFORMED.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from probe.decode import quic as quic_mod
from probe.decode.quic import (
    BAD_TAG,
    DONE,
    MALFORMED,
    MAX_CRYPTO_BYTES,
    MAX_FRAGMENTS,
    MAX_INITIAL_PACKETS,
    NEED_MORE,
    NOT_QUIC,
    UNKNOWN_VERSION,
    VERSION_1,
    VERSION_2,
    InitialKeys,
    QuicInitialReader,
    client_initial_keys,
    looks_like_initial,
)

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "captures"

# --------------------------------------------------------------------------------------------
# RFC 9001 Appendix A and RFC 9369 Appendix A (both use the same CRYPTO frame and DCID)
# --------------------------------------------------------------------------------------------

RFC_DCID = bytes.fromhex("8394c8f03e515708")

RFC_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f129 39b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c000004130113 02010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a 00080006001d00170018001000070005"
    "04616c706e0005000501000000000033 00260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce1 5d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408 050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff050480 00ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806 048000ffff"
)
RFC_V1_PACKET = bytes.fromhex(
    "c000000001088394c8f03e5157080000 449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c 0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a12 82a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba1 7c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89 eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae81215 4682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf3 62c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e 610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5 eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d8 2df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7 961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4 faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d874 3eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7 fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a 33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a22 9a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf 330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f0 5796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576 f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff2 8f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f 6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37 252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accd d5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4 dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c 4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a07 1b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b4381303 68cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e5 66d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499d bd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433 bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885 c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723 c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd8 04a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356f bf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905dd f3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be 0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b 8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)
RFC_V2_PACKET = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000 449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c 96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb 5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58 a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004 f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de 1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f77 32e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b 6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65 e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b 46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df 8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910 d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34 b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae43 2b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe060 17e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5 c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd4787 6d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99 f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806 105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e1 0d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd 770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a4083 22cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388 d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a4 17ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a 30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037fe bf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42 310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd115 7380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec30966 1bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671 a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da498730 7cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5a ddf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0a e55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde2 7525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f3 3e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8af bab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b20 9973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc"
)

# --------------------------------------------------------------------------------------------
# Test-side encryptor: a client Initial exactly as RFC 9001 5 protects it
# --------------------------------------------------------------------------------------------

DCID = bytes.fromhex("0011223344556677")
SERVER_CID = bytes.fromhex("a1a2a3a4")
_INITIAL_TYPE = {VERSION_1: 0x00, VERSION_2: 0x10}
_ZERO_RTT_TYPE = {VERSION_1: 0x10, VERSION_2: 0x20}


def varint(value: int, size: int | None = None) -> bytes:
    if size is None:
        size = 1 if value < 0x40 else 2 if value < 0x4000 else 4 if value < 0x40000000 else 8
    prefix = {1: 0, 2: 1, 4: 2, 8: 3}[size]
    return ((prefix << (8 * size - 2)) | value).to_bytes(size, "big")


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def protect(
    frames: bytes,
    *,
    version: int = VERSION_1,
    dcid: bytes = DCID,
    scid: bytes = b"\x0c\x0d",
    packet_number: int = 0,
    number_len: int = 4,
    keys: InitialKeys | None = None,
    pad_to: int = 0,
    reserved_bits: int = 0,
) -> bytes:
    """One protected client Initial packet; PADDING frames make it `pad_to` bytes long."""
    keys = keys or client_initial_keys(version, dcid)
    first = 0xC0 | _INITIAL_TYPE[version] | reserved_bits << 2 | (number_len - 1)
    start = bytes((first,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid
    start += varint(0)  # no token
    overhead = len(start) + 2 + number_len + 16
    frames += bytes(max(0, pad_to - overhead - len(frames), 4 - number_len - len(frames)))
    truncated = (packet_number & ((1 << (8 * number_len)) - 1)).to_bytes(number_len, "big")
    header = start + varint(number_len + len(frames) + 16, 2) + truncated
    nonce = (int.from_bytes(keys.iv, "big") ^ packet_number).to_bytes(12, "big")
    sealed = AESGCM(keys.key).encrypt(nonce, frames, header)
    sample = sealed[4 - number_len : 20 - number_len]
    mask = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor().update(sample)
    masked = bytearray(header)
    masked[0] ^= mask[0] & 0x0F
    for index in range(number_len):
        masked[len(header) - number_len + index] ^= mask[1 + index]
    return bytes(masked) + sealed


def long_header_packet(type_bits: int, body: bytes, version: int = VERSION_1, dcid: bytes = DCID) -> bytes:
    """An unprotected-looking long-header packet of another type (0-RTT): only its Length matters."""
    header = bytes((0xC0 | type_bits,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid + b"\x00"
    return header + varint(len(body), 2) + body


def client_hello(server_name: bytes, size: int = 3000) -> bytes:
    """A ClientHello handshake message with an SNI, padded by an extension to `size` bytes."""
    sni_body = struct.pack("!HBH", len(server_name) + 3, 0, len(server_name)) + server_name
    extensions = struct.pack("!HH", 0, len(sni_body)) + sni_body
    head = b"\x03\x03" + bytes(range(32)) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    filler = size - 4 - len(head) - 2 - len(extensions) - 4
    extensions += struct.pack("!HH", 0xFE0D, filler) + random.Random(size).randbytes(filler)
    body = head + struct.pack("!H", len(extensions)) + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


def server_name(hello: bytes) -> str | None:
    """SNI host_name of a ClientHello handshake message (a parser for the tests only)."""
    assert hello[0] == 1 and int.from_bytes(hello[1:4], "big") == len(hello) - 4
    pos = 4 + 34
    pos += 1 + hello[pos]  # session id
    pos += 2 + int.from_bytes(hello[pos : pos + 2], "big")  # cipher suites
    pos += 1 + hello[pos]  # compression methods
    end = pos + 2 + int.from_bytes(hello[pos : pos + 2], "big")
    assert end == len(hello)
    pos += 2
    while pos < end:
        ext_type, ext_len = struct.unpack_from("!HH", hello, pos)
        body = hello[pos + 4 : pos + 4 + ext_len]
        if ext_type == 0:
            name_len = int.from_bytes(body[3:5], "big")
            return body[5 : 5 + name_len].decode()
        pos += 4 + ext_len
    return None


HELLO = client_hello(b"split.example")


def feed_all(reader: QuicInitialReader, datagrams: list[bytes]) -> list[int]:
    return [reader.feed(datagram) for datagram in datagrams]


# --------------------------------------------------------------------------------------------
# RFC test vectors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "packet", "key", "iv", "hp"),
    [
        (
            VERSION_1,
            RFC_V1_PACKET,
            "1f369613dd76d5467730efcbe3b1a22d",
            "fa044b2f42a3fd3b46fb255c",
            "9f50449e04a0e810283a1e9933adedd2",
        ),
        (
            VERSION_2,
            RFC_V2_PACKET,
            "8b1a0bc121284290a29e0971b5cd045d",
            "91f73e2351d8fa91660e909f",
            "45b95e15235d6f45a6b19cbcb0294ba9",
        ),
    ],
    ids=["rfc9001", "rfc9369"],
)
def test_rfc_client_initial(version: int, packet: bytes, key: str, iv: str, hp: str) -> None:
    expected = InitialKeys(bytes.fromhex(key), bytes.fromhex(iv), bytes.fromhex(hp))
    assert client_initial_keys(version, RFC_DCID) == expected
    assert looks_like_initial(packet)
    reader = QuicInitialReader()

    assert reader.feed(packet) == DONE

    assert reader.client_hello == RFC_CRYPTO_FRAME[4:]  # the frame: type 06, offset 00, length 40f1
    assert reader.client_hello[:4] == bytes.fromhex("010000ed")
    assert server_name(reader.client_hello) == "example.com"
    assert reader.buffered_bytes == 0
    assert reader.feed(packet) == DONE  # finished: the same answer, no work


def test_rfc_packet_encrypted_by_the_test_helper_is_byte_identical() -> None:
    """The test encryptor reproduces the RFC packet, so the packets it builds are real ones."""
    frames = RFC_CRYPTO_FRAME + bytes(1162 - len(RFC_CRYPTO_FRAME))
    rebuilt = protect(frames, dcid=RFC_DCID, scid=b"", packet_number=2)
    assert rebuilt == RFC_V1_PACKET
    assert protect(frames, version=VERSION_2, dcid=RFC_DCID, scid=b"", packet_number=2) == RFC_V2_PACKET


# --------------------------------------------------------------------------------------------
# Shared real captures
# --------------------------------------------------------------------------------------------


def client_flows(capture: Path) -> dict[tuple, list[bytes]]:
    """UDP payloads per (src, sport, dst, dport), for the flows whose first datagram may be QUIC."""
    scapy_all = pytest.importorskip("scapy.all")
    flows: dict[tuple, list[bytes]] = {}
    for packet in scapy_all.PcapReader(str(capture)):
        if scapy_all.UDP not in packet:
            continue
        network = packet[scapy_all.IP] if scapy_all.IP in packet else packet[scapy_all.IPv6]
        udp = packet[scapy_all.UDP]
        key = (network.src, udp.sport, network.dst, udp.dport)
        payload = bytes(udp.payload)
        if key in flows or looks_like_initial(payload):
            flows.setdefault(key, []).append(payload)
    return flows


@pytest.mark.parametrize(
    "name", ["quic-ietf-initial.pcap", "quic-http3-curl-google.pcap", "pcapng-22-interfaces-tls.pcapng"]
)
def test_real_captures_give_the_truth_server_names(name: str) -> None:
    if not CAPTURES.is_dir():
        pytest.skip(f"shared capture corpus not found at {CAPTURES}")
    truth = json.loads((CAPTURES / "truth" / f"{name}.json").read_text())
    names = set()
    for datagrams in client_flows(CAPTURES / name).values():
        reader = QuicInitialReader()
        for datagram in datagrams:
            if reader.feed(datagram) != NEED_MORE:
                break
        # The server's Initials look alike but are protected with the server's keys.
        assert reader.status in (DONE, BAD_TAG)
        if reader.status == DONE:
            names.add(server_name(reader.client_hello))
    assert names == set(truth["quic_sni"])


def test_real_client_initial_sent_to_the_server_connection_id_uses_the_first_keys() -> None:
    """curl's second Initial goes to the server's connection ID, protected with the first DCID's keys."""
    if not CAPTURES.is_dir():
        pytest.skip(f"shared capture corpus not found at {CAPTURES}")
    first, second = [
        flow for key, flow in client_flows(CAPTURES / "quic-http3-curl-google.pcap").items() if key[3] == 443
    ][0][:2]
    first_dcid = first[6 : 6 + first[5]]
    assert second[6 : 6 + second[5]] != first_dcid
    # Its CRYPTO-less content cannot complete a hello; placed before a packet of the first DCID
    # it must authenticate once those keys are known.
    hello_packet = protect(crypto_frame(0, HELLO[:1000]), dcid=first_dcid, pad_to=1200)
    reader = QuicInitialReader()
    assert reader.feed(hello_packet) == NEED_MORE
    assert reader.feed(second) == NEED_MORE
    assert reader._initial_packets == 2 and len(reader._keys) == 2


# --------------------------------------------------------------------------------------------
# Reassembly
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2])
def test_hello_over_two_datagrams_in_reverse_order(version: int) -> None:
    first = protect(crypto_frame(0, HELLO[:1100]), version=version, packet_number=0, pad_to=1200)
    second = protect(crypto_frame(1100, HELLO[1100:2100]), version=version, packet_number=1, pad_to=1200)
    third = protect(crypto_frame(2100, HELLO[2100:]), version=version, packet_number=2, number_len=1, pad_to=1200)
    reader = QuicInitialReader()

    assert feed_all(reader, [third, second, first]) == [NEED_MORE, NEED_MORE, DONE]

    assert reader.client_hello == HELLO
    assert server_name(reader.client_hello) == "split.example"
    assert reader.buffered_bytes == 0


def test_hello_over_two_packets_coalesced_in_one_datagram() -> None:
    second = protect(crypto_frame(1500, HELLO[1500:]), packet_number=1)
    first = protect(crypto_frame(0, HELLO[:1500]), packet_number=0)
    reader = QuicInitialReader()
    assert reader.feed(second + first) == DONE
    assert reader.client_hello == HELLO


def test_chrome_style_frames_shuffled_inside_one_packet_with_ping_padding_and_ack() -> None:
    pieces = [(offset, HELLO[offset : offset + 300]) for offset in range(0, len(HELLO), 300)]
    random.Random(7).shuffle(pieces)
    ack_ecn = b"\x03" + varint(5) + varint(100) + varint(1) + varint(2) + varint(0) + varint(1) + varint(7) * 3
    frames = b"\x01" + ack_ecn + b"\x00" * 20 + b"\x01".join(crypto_frame(offset, data) for offset, data in pieces)
    reader = QuicInitialReader()
    assert reader.feed(protect(frames)) == DONE
    assert reader.client_hello == HELLO


def test_overlapping_and_duplicated_crypto_frames_first_copy_wins() -> None:
    forged = bytearray(HELLO)
    forged[500:1000] = b"X" * 500  # a later overlapping copy disagreeing with the first
    frames = [
        crypto_frame(0, HELLO[:1000]),
        crypto_frame(0, HELLO[:1000]),  # retransmission
        crypto_frame(500, bytes(forged[500:1500])),  # overlap at both ends of a gap
        crypto_frame(1200, HELLO[1200:2000]),
        crypto_frame(1900, HELLO[1900:]),
    ]
    datagrams = [protect(frame, packet_number=number, pad_to=1200) for number, frame in enumerate(frames)]
    reader = QuicInitialReader()

    assert feed_all(reader, datagrams) == [NEED_MORE, NEED_MORE, NEED_MORE, NEED_MORE, DONE]

    assert reader.client_hello == HELLO


def test_overlap_covering_several_fragments_joins_them() -> None:
    reader = QuicInitialReader()
    for number, offset in enumerate((100, 400, 700)):
        packet = protect(crypto_frame(offset, HELLO[offset : offset + 100]), packet_number=number, pad_to=1200)
        assert reader.feed(packet) == NEED_MORE
    assert len(reader._fragments) == 3
    assert reader.feed(protect(crypto_frame(50, HELLO[50:900]), packet_number=3, pad_to=1200)) == NEED_MORE
    assert reader._fragments == [(50, HELLO[50:900])]
    assert reader.buffered_bytes == 850
    assert reader.feed(protect(crypto_frame(0, HELLO[:60]) + crypto_frame(900, HELLO[900:]), packet_number=4)) == DONE
    assert reader.client_hello == HELLO


def test_packets_to_the_server_connection_id_keep_the_first_keys() -> None:
    """RFC 9001 5.2: after the server's Initial the client changes DCID but not Initial keys."""
    first_keys = client_initial_keys(VERSION_1, DCID)
    first = protect(crypto_frame(0, HELLO[:1000]), pad_to=1200)
    later = protect(crypto_frame(1000, HELLO[1000:]), dcid=SERVER_CID, keys=first_keys, packet_number=1)
    reader = QuicInitialReader()
    assert feed_all(reader, [first, later]) == [NEED_MORE, DONE]
    assert reader.client_hello == HELLO


def test_packets_after_a_retry_use_keys_of_the_new_connection_id() -> None:
    retried = protect(crypto_frame(0, HELLO[:1000]), dcid=SERVER_CID, pad_to=1200)
    rest = protect(crypto_frame(1000, HELLO[1000:]), dcid=SERVER_CID, packet_number=1)
    reader = QuicInitialReader()
    assert feed_all(reader, [retried, rest]) == [NEED_MORE, DONE]


def test_other_packet_types_are_stepped_over_unread() -> None:
    zero_rtt = long_header_packet(_ZERO_RTT_TYPE[VERSION_2], b"\xee" * 300, version=VERSION_2)
    first = protect(crypto_frame(0, HELLO[:1400]), version=VERSION_2)
    second = protect(crypto_frame(1400, HELLO[1400:]), version=VERSION_2, packet_number=1)
    reader = QuicInitialReader()
    assert feed_all(reader, [first + zero_rtt, zero_rtt, zero_rtt + second]) == [NEED_MORE, NEED_MORE, DONE]
    assert reader.client_hello == HELLO


def test_short_header_and_zero_padding_end_the_datagram() -> None:
    short_header = b"\x40" + DCID + b"\x99" * 100
    first = protect(crypto_frame(0, HELLO[:1000]))
    second = protect(crypto_frame(1000, HELLO[1000:]), packet_number=1)
    reader = QuicInitialReader()
    assert reader.feed(first + bytes(300)) == NEED_MORE
    assert reader.feed(first + short_header + second) == NEED_MORE  # `second` hidden behind it
    assert reader.feed(second + bytes(1)) == DONE


def test_unknown_version_and_retry_after_the_first_packet_end_the_datagram() -> None:
    first = protect(crypto_frame(0, HELLO[:1000]), pad_to=1200)
    second = protect(crypto_frame(1000, HELLO[1000:]), packet_number=1)
    retry = long_header_packet(0x30, bytes(40))
    other_version = bytearray(second)
    other_version[1:5] = (0xFF00001D).to_bytes(4, "big")
    reader = QuicInitialReader()
    assert reader.feed(first + retry + second) == NEED_MORE
    assert reader.feed(first + bytes(other_version)) == NEED_MORE
    assert reader.feed(bytes(other_version)) == UNKNOWN_VERSION


def test_packet_numbers_decoded_from_short_encodings() -> None:
    """RFC 9000 A.3: the nonce needs the full number, recovered around the largest one seen."""
    keys = client_initial_keys(VERSION_1, DCID)
    pieces = [(250, 4, 500, 1000), (260, 1, 1000, 2000), (255, 1, 2000, len(HELLO)), (300, 2, 0, 500)]
    reader = QuicInitialReader()
    statuses = []
    for number, size, start, stop in pieces:
        frame = crypto_frame(start, HELLO[start:stop])
        statuses.append(reader.feed(protect(frame, keys=keys, packet_number=number, number_len=size, pad_to=1200)))
    assert statuses == [NEED_MORE, NEED_MORE, NEED_MORE, DONE]
    assert reader.client_hello == HELLO


def test_partial_handshake_header_needs_more() -> None:
    reader = QuicInitialReader()
    assert reader.feed(protect(crypto_frame(0, HELLO[:2]), pad_to=1200)) == NEED_MORE
    assert reader.feed(protect(crypto_frame(2, HELLO[2:]), packet_number=1)) == DONE


def test_keys_of_at_most_the_bound_of_connection_ids_are_kept() -> None:
    reader = QuicInitialReader()
    step = 400
    offsets = list(range(step, len(HELLO), step))
    for number, offset in enumerate(offsets):
        dcid = bytes((number,)) * 8
        frame = crypto_frame(offset, HELLO[offset : offset + step])
        assert reader.feed(protect(frame, dcid=dcid, packet_number=number, pad_to=1200)) == NEED_MORE
        assert len(reader._keys) <= quic_mod.MAX_KEY_SETS
    assert len(offsets) > quic_mod.MAX_KEY_SETS
    assert reader.feed(protect(crypto_frame(0, HELLO[:step]), dcid=b"\x01" * 8, packet_number=99)) == DONE
    assert reader.client_hello == HELLO


def test_connection_close_ends_the_packet() -> None:
    close = b"\x1c" + varint(0x0A) + varint(0) + varint(0)
    reader = QuicInitialReader()
    packet = protect(crypto_frame(0, HELLO[:1000]) + close + crypto_frame(1000, HELLO[1000:]))
    assert reader.feed(packet) == NEED_MORE
    assert reader.buffered_bytes == 1000


def test_first_handshake_message_other_than_client_hello_is_malformed() -> None:
    server_hello = b"\x02" + HELLO[1:]
    reader = QuicInitialReader()
    assert reader.feed(protect(crypto_frame(0, server_hello[:900]), pad_to=1200)) == MALFORMED


def test_finished_reader_releases_everything() -> None:
    reader = QuicInitialReader()
    reader.feed(protect(crypto_frame(1000, HELLO[1000:]), pad_to=1200))
    assert reader.buffered_bytes > 0 and reader._keys
    assert reader.feed(protect(crypto_frame(0, HELLO[:1000]), packet_number=1, pad_to=1200)) == DONE
    assert reader.buffered_bytes == 0 and not reader._keys
    assert reader.feed(b"anything") == DONE


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", [30, 600, len(RFC_V1_PACKET) - 1])
def test_flipped_ciphertext_or_tag_byte_is_bad_tag(position: int) -> None:
    packet = bytearray(RFC_V1_PACKET)
    packet[position] ^= 0x01
    reader = QuicInitialReader()
    assert reader.feed(bytes(packet)) == BAD_TAG
    assert reader.client_hello is None
    assert reader.feed(RFC_V1_PACKET) == BAD_TAG  # final


def test_changed_connection_id_is_bad_tag() -> None:
    packet = bytearray(RFC_V2_PACKET)
    packet[8] ^= 0x80  # inside the DCID: other keys, other associated data
    assert QuicInitialReader().feed(bytes(packet)) == BAD_TAG


@pytest.mark.parametrize("version", [0x00000000, 0xFF00001D, 0x1A2A3A4A, 0x00000002])
def test_unknown_version(version: int) -> None:
    packet = RFC_V1_PACKET[:1] + version.to_bytes(4, "big") + RFC_V1_PACKET[5:]
    assert not looks_like_initial(packet)
    assert QuicInitialReader().feed(packet) == UNKNOWN_VERSION


def test_not_quic_first_datagram() -> None:
    dns_query = bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001")
    handshake_type = bytes((RFC_V1_PACKET[0] | 0x20,)) + RFC_V1_PACKET[1:]
    for payload in (dns_query, dns_query + bytes(1200), b"", b"\xc0\x00", handshake_type):
        reader = QuicInitialReader()
        assert reader.feed(payload) == NOT_QUIC
        assert reader.feed(RFC_V1_PACKET) == NOT_QUIC  # final


@pytest.mark.parametrize("cut", [6, 12, 20, 600, len(RFC_V1_PACKET) - 1])
def test_truncated_datagram_is_malformed(cut: int) -> None:
    assert QuicInitialReader().feed(RFC_V1_PACKET[:cut]) == MALFORMED


def test_length_field_larger_than_the_datagram_is_malformed() -> None:
    packet = bytearray(RFC_V1_PACKET)
    assert packet[16:18] == b"\x44\x9e"  # Length 1182
    packet[16:18] = varint(1183, 2)
    assert QuicInitialReader().feed(bytes(packet)) == MALFORMED


@pytest.mark.parametrize(
    "header_tail",
    [
        b"\x15" + bytes(21) + b"\x00\x00\x40",  # DCID length 21
        b"\x08" + DCID + b"\x15" + bytes(21),  # SCID length 21
        b"\x08" + DCID + b"\x00\xff\xff\xff\xff\xff\xff\xff\xff",  # token length of 2^62 bytes
        b"\x08" + DCID + b"\x00\x00\xc0\x00",  # Length varint cut short
        b"\x08" + DCID + b"\x00\x00\x40\x10" + bytes(64),  # Length 16: no room for a sample
    ],
)
def test_lying_header_fields_are_malformed(header_tail: bytes) -> None:
    assert QuicInitialReader().feed(b"\xc0" + VERSION_1.to_bytes(4, "big") + header_tail) == MALFORMED


def test_truncated_packet_after_a_good_one_is_malformed() -> None:
    first = protect(crypto_frame(0, HELLO[:1000]), pad_to=1200)
    assert QuicInitialReader().feed(first + b"\xc0\x00\x00") == MALFORMED


def test_authentic_packet_with_reserved_bits_set_is_malformed() -> None:
    reader = QuicInitialReader()
    assert reader.feed(protect(crypto_frame(0, HELLO[:1000]), pad_to=1200, reserved_bits=2)) == MALFORMED


def test_datagram_larger_than_udp_allows_is_malformed() -> None:
    reader = QuicInitialReader()
    assert reader.feed(protect(crypto_frame(1000, HELLO[1000:]), pad_to=1200)) == NEED_MORE
    assert reader.feed(protect(crypto_frame(0, HELLO[:1000])) + bytes(65536)) == MALFORMED


@pytest.mark.parametrize(
    "frames",
    [
        crypto_frame(MAX_CRYPTO_BYTES - 10, b"x" * 11),
        crypto_frame(MAX_CRYPTO_BYTES, b"x"),
        crypto_frame(1 << 40, b"x"),
        b"\x06\x00" + varint(2000) + b"short",  # CRYPTO length past the packet
        b"\x02\x00\x00" + varint(1000) + b"\x00",  # ACK claiming more ranges than bytes left
        b"\x03\x00\x00\x00\x00\x01",  # ACK_ECN cut inside its counts
        b"\x06\x00\x80",  # varint cut short
    ],
)
def test_lying_frames_are_malformed(frames: bytes) -> None:
    assert QuicInitialReader().feed(protect(frames)) == MALFORMED


def test_client_hello_declaring_more_than_the_bound_is_malformed() -> None:
    reader = QuicInitialReader()
    assert reader.feed(protect(crypto_frame(0, b"\x01\x01\x00\x00" + HELLO[4:900]))) == MALFORMED


def test_too_many_fragments_is_malformed() -> None:
    frames = b"".join(crypto_frame(100 + 3 * index, b"x") for index in range(MAX_FRAGMENTS + 1))
    reader = QuicInitialReader()
    assert reader.feed(protect(frames)) == MALFORMED
    assert reader.buffered_bytes == 0


def test_endless_initials_never_completing_give_up_with_bounded_memory() -> None:
    keys = client_initial_keys(VERSION_1, DCID)
    reader = QuicInitialReader()
    statuses = []
    for number in range(MAX_INITIAL_PACKETS + 5):
        offset = 1 + number * 1500  # never offset 0, never joined
        datagram = protect(crypto_frame(offset, bytes(1100)), keys=keys, packet_number=number)
        statuses.append(reader.feed(datagram))
        assert reader.buffered_bytes <= MAX_CRYPTO_BYTES
    assert statuses[: MAX_INITIAL_PACKETS] == [NEED_MORE] * MAX_INITIAL_PACKETS
    assert statuses[MAX_INITIAL_PACKETS:] == [MALFORMED] * 5
    assert reader.buffered_bytes == 0


def test_endless_datagrams_without_initials_give_up() -> None:
    reader = QuicInitialReader()
    assert reader.feed(protect(crypto_frame(1000, HELLO[1000:]), pad_to=1200)) == NEED_MORE
    zero_rtt = long_header_packet(_ZERO_RTT_TYPE[VERSION_1], b"\xee" * 1000)
    statuses = feed_all(reader, [zero_rtt] * quic_mod.MAX_DATAGRAMS)
    assert statuses[-2:] == [NEED_MORE, MALFORMED]


def test_at_most_the_bound_of_packets_per_datagram_is_read() -> None:
    zero_rtt = long_header_packet(_ZERO_RTT_TYPE[VERSION_1], b"")
    hello = protect(crypto_frame(0, HELLO))
    reader = QuicInitialReader()
    assert reader.feed(protect(b"\x01", pad_to=1200)) == NEED_MORE
    assert reader.feed(zero_rtt * quic_mod.MAX_COALESCED_PACKETS + hello) == NEED_MORE
    assert reader.feed(zero_rtt * (quic_mod.MAX_COALESCED_PACKETS - 1) + hello) == DONE


# --------------------------------------------------------------------------------------------
# looks_like_initial
# --------------------------------------------------------------------------------------------


def test_looks_like_initial() -> None:
    dns_query = bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001")
    short_header = b"\x41" + DCID + bytes(1200)
    v1_type_in_v2 = RFC_V2_PACKET[:1] + VERSION_1.to_bytes(4, "big") + RFC_V2_PACKET[5:]
    assert looks_like_initial(RFC_V1_PACKET) and looks_like_initial(RFC_V2_PACKET)
    assert looks_like_initial(bytearray(RFC_V1_PACKET)) and looks_like_initial(memoryview(RFC_V1_PACKET))
    assert not looks_like_initial(dns_query)
    assert not looks_like_initial(dns_query + bytes(1200))
    assert not looks_like_initial(short_header)
    assert not looks_like_initial(v1_type_in_v2)  # v2 Initial type bits 01 mean 0-RTT in v1
    assert not looks_like_initial(RFC_V1_PACKET[:1199])  # below the 1200 bytes of RFC 9000 14.1
    assert not looks_like_initial(RFC_V1_PACKET[:5] + b"\x15" + RFC_V1_PACKET[6:])  # DCID length 21
    assert not looks_like_initial(b"\x80" + RFC_V1_PACKET[1:])  # fixed bit clear
    assert not looks_like_initial(RFC_V1_PACKET + bytes(65536))
    assert not looks_like_initial(b"")


# --------------------------------------------------------------------------------------------
# Fuzzing past feed's safety net
# --------------------------------------------------------------------------------------------


def test_fuzzed_frames_raise_nothing_but_malformed() -> None:
    rng = random.Random(1234)
    vocabulary = [b"\x00", b"\x01", b"\x02", b"\x03", b"\x06", b"\x1c", b"\x40", b"\x80", b"\xc0", b"\xff", b"\x3f"]
    for _ in range(3000):
        payload = b"".join(rng.choice(vocabulary) for _ in range(rng.randrange(1, 40)))
        reader = QuicInitialReader()
        try:
            status = reader._read_frames(payload)
        except quic_mod._Malformed:
            continue
        assert status in (NEED_MORE, DONE, MALFORMED)


def test_fuzzed_datagrams_raise_nothing_but_malformed() -> None:
    rng = random.Random(99)
    coalesced = protect(crypto_frame(0, HELLO[:500])) + long_header_packet(0x10, b"\x01" * 40)
    seeds = [RFC_V1_PACKET, RFC_V2_PACKET, coalesced]
    for index in range(400):
        datagram = bytearray(rng.choice(seeds)[: rng.randrange(1, 1300)])
        for _ in range(rng.randrange(1, 4)):
            datagram[rng.randrange(min(len(datagram), 30))] = rng.randrange(256)
        reader = QuicInitialReader()
        try:
            status = reader._feed(bytes(datagram))
        except quic_mod._Malformed:
            continue
        assert status in (NOT_QUIC, NEED_MORE, DONE, MALFORMED, BAD_TAG, UNKNOWN_VERSION)
