"""Marker matching: the index's answers, and the vector name filter never hiding a name that hits."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest

from bundle_support import bundle_of

from probe.decode import dns, tls
from probe.decode.batch import client_hello_server_names, dns_question_names
from probe.decode.packet import address_key
from probe.match.index import MarkerIndex as BundleIndex
from probe.match.markers import Marker
from probe.match.name_filter import NAME_COLUMNS, NameFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from mixed_capture import client_hello, dns_message  # noqa: E402


def marker(number: int, kind: str, value: str, subdomains: bool = False) -> Marker:
    return Marker(f"m{number}", kind, value, "test", 1, subdomains)


def MarkerIndex(markers: list[Marker]) -> BundleIndex:
    return BundleIndex([bundle_of(markers)])


def numbers(markers: tuple[Marker, ...]) -> list[int]:
    return sorted(int(found.id[1:]) for found in markers)


def test_addresses_and_nested_prefixes() -> None:
    index = MarkerIndex(
        [
            marker(0, "ipv4", "198.51.100.7"),
            marker(1, "cidr", "198.51.100.0/24"),
            marker(2, "cidr", "198.51.0.0/16"),
            marker(3, "cidr", "2001:db8::/32"),
            marker(4, "ipv6", "2001:db8::1"),
        ]
    )
    assert numbers(index.match_address(address_key("198.51.100.7"))) == [0, 1, 2]
    assert numbers(index.match_address(address_key("198.51.7.1"))) == [2]
    assert index.match_address(address_key("198.52.0.1")) == ()
    assert numbers(index.match_address(address_key("2001:db8::1"))) == [3, 4]
    assert index.match_address(address_key("2001:db9::1")) == ()
    candidates = index.address_candidates(np.frombuffer(b"".join(address_key(a) for a in ("198.51.100.7", "198.52.0.1", "10.0.0.1")), np.uint8).reshape(-1, 16))
    assert candidates.tolist() == [True, False, False]


def test_names_exact_and_with_subdomains() -> None:
    index = MarkerIndex([marker(0, "domain", "evil.example", subdomains=True), marker(1, "domain", "exact.example"), marker(2, "domain", "com", subdomains=True)])
    assert numbers(index.match_name("evil.example")) == [0]
    assert numbers(index.match_name("a.b.evil.example")) == [0]
    assert index.match_name("notevil.example") == ()
    assert numbers(index.match_name("exact.example")) == [1]
    assert index.match_name("www.exact.example") == ()
    assert numbers(index.match_name("anything.com")) == [2]


def _random_name(rng: random.Random) -> str:
    return ".".join("".join(rng.choice("abcxyz-") for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 4)))


def test_name_filter_lets_through_every_name_that_hits() -> None:
    rng = random.Random(5)
    markers = [marker(number, "domain", _random_name(rng), rng.random() < 0.5) for number in range(400)]
    index = MarkerIndex(markers)
    names = [_random_name(rng) for _ in range(20_000)] + [m.value.upper() for m in markers] + ["www." + m.value for m in markers]
    matrix = np.zeros((len(names), NAME_COLUMNS), dtype=np.uint8)
    for row, name in enumerate(names):
        matrix[row, : len(name)] = np.frombuffer(name.encode(), np.uint8)
    passed = NameFilter(index).may_hit(matrix, np.array([len(name) for name in names]))
    hits = np.array([bool(index.match_name(name.lower())) for name in names])
    assert hits.sum() > 1000
    assert not (hits & ~passed).any()
    assert passed.sum() < hits.sum() * 1.01 + 10  # and it does filter


def _packed(messages: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = b"".join(messages) + bytes(8)
    offsets = np.cumsum([0] + [len(message) for message in messages[:-1]]).astype(np.int64)
    return np.frombuffer(data, np.uint8), offsets, np.array([len(message) for message in messages], dtype=np.int64)


def test_vector_dns_names_equal_the_exact_decoder() -> None:
    rng = random.Random(2)
    names = [_random_name(rng) for _ in range(500)] + ["a." * 20 + "com", "x" * 70 + ".com", "Mixed.CASE.example"]
    messages = [dns_message(name, 1, None) for name in names] + [dns_message(names[0], 1, "192.0.2.1"), b"\x00\x01" * 3]
    extracted, lengths = dns_question_names(*_packed(messages))
    for row, message in enumerate(messages):
        if lengths[row] >= 0:
            assert [bytes(extracted[row, : lengths[row]]).decode().lower()] == dns.dns_query_names(message)
    assert (lengths[:500] >= 0).all()


def test_vector_server_names_equal_the_exact_parser() -> None:
    rng = random.Random(3)
    names = [_random_name(rng) + ".example" for _ in range(300)]
    hellos = [client_hello(name, rng, post_quantum=rng.random() < 0.3) for name in names]
    segments = [hello[:1400] for hello in hellos] + [hellos[0][:60], b"\x16\x03\x01\x00\x05\x01" + bytes(60)]
    extracted, lengths = client_hello_server_names(*_packed(segments))
    judged = 0
    for row, segment in enumerate(segments):
        if lengths[row] >= 0:
            judged += 1
            assert bytes(extracted[row, : lengths[row]]).decode() == tls.read_client_hello(hellos[row]).server_name
    assert judged >= 290
    assert lengths[-1] == -1 and lengths[-2] == -1


@pytest.mark.parametrize("seed", range(3))
def test_vector_extractors_never_fail_on_garbage(seed: int) -> None:
    rng = random.Random(seed)
    messages = [rng.randbytes(rng.randint(1, 300)) for _ in range(2000)]
    buffer, offsets, lengths = _packed(messages)
    for extract in (dns_question_names, client_hello_server_names):
        names, name_lengths = extract(buffer, offsets, lengths)
        assert names.shape == (len(messages), NAME_COLUMNS) and (name_lengths <= NAME_COLUMNS).all()
