"""Byte patterns and YARA rules, with the real libraries: both pattern engines must find the same
matches across segment boundaries, never across a gap, and survive the pickling that hands them
to worker processes."""

from __future__ import annotations

import pickle
import random
import re
import threading
import time

import pytest

from probe.match.markers import Marker
from probe.match.patterns import REGEX_WINDOW, PatternMatcher, hyperscan
from probe.bundles.values import compile_yara
from probe.match.yara_rules import YaraMatcher

ENGINES = [
    pytest.param("hyperscan", marks=pytest.mark.skipif(hyperscan is None, reason="hyperscan is not installed on this platform")),
    "python",
]


def pattern(number: int, value: str, encoding: str = "literal") -> Marker:
    return Marker(f"p{number}", "bytes", value, "test", 1, name=f"pattern {number}", encoding=encoding)


def rule(number: int, text: str) -> Marker:
    return Marker(f"y{number}", "yara", text, "test", 1, name=f"rule {number}")


def scan_all(matcher: PatternMatcher, *segments: bytes) -> list[int]:
    stream = matcher.open()
    found = [position for segment in segments for position in stream.scan(segment)]
    stream.close()
    return found


@pytest.mark.parametrize("engine", ENGINES)
def test_literal_hex_and_regex(engine: str) -> None:
    markers = [
        pattern(0, "evil-token"),
        Marker("d", "domain", "example.org", "test", 1),
        pattern(2, "00ff00de", "hex"),
        pattern(3, r"GET /[a-z]+\.php", "regex"),
        pattern(4, "not-there"),
    ]
    matcher = PatternMatcher.build(markers, engine)
    assert matcher.engine == engine and matcher.patterns == 4
    assert sorted(scan_all(matcher, b"xx\x00\xff\x00\xdeyy GET /shell.php HTTP/1.1\r\n evil-token")) == [0, 2, 3]


@pytest.mark.parametrize("engine", ENGINES)
def test_nul_bytes_in_every_kind(engine: str) -> None:
    markers = [pattern(0, "00000041", "hex"), pattern(1, "a\x00b"), pattern(2, "c\x00+d", "regex"), pattern(3, "00", "hex")]
    matcher = PatternMatcher.build(markers, engine)
    assert sorted(scan_all(matcher, b"\x00\x00\x00A a\x00b c\x00\x00d")) == [0, 1, 2, 3]
    assert scan_all(matcher, b"AAAA a b cd") == []


@pytest.mark.parametrize("engine", ENGINES)
def test_split_at_every_offset(engine: str) -> None:
    payload = b"<<attack\x00payload>>"
    markers = [pattern(0, "attack\x00payload"), pattern(1, payload.hex(), "hex"), pattern(2, r"a[t]{2}ack.pay(load|off)", "regex")]
    matcher = PatternMatcher.build(markers, engine)
    for cut in range(len(payload) + 1):
        assert sorted(scan_all(matcher, b"head" + payload[:cut], payload[cut:] + b"tail")) == [0, 1, 2], cut
    for first, second in ((3, 9), (1, 2), (8, 9)):
        assert sorted(scan_all(matcher, payload[:first], payload[first:second], payload[second:])) == [0, 1, 2]


@pytest.mark.parametrize("engine", ENGINES)
def test_no_match_across_a_gap(engine: str) -> None:
    matcher = PatternMatcher.build([pattern(0, "attack-payload"), pattern(1, "attack-pay(load)", "regex")], engine)
    stream = matcher.open()
    assert stream.scan(b"xx attack-") == []
    stream.reset()
    assert stream.scan(b"payload xx") == []
    assert sorted(stream.scan(b" attack-payload")) == [0, 1]
    stream.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_each_marker_once_per_stream(engine: str) -> None:
    matcher = PatternMatcher.build([pattern(0, "beacon"), pattern(1, "be+acon", "regex")], engine)
    stream = matcher.open()
    assert sorted(stream.scan(b"beacon beacon")) == [0, 1]
    assert stream.scan(b"beacon") == []
    stream.reset()
    assert stream.scan(b"beacon") == []
    stream.close()
    stream.close()
    assert scan_all(matcher, b"beacon") in ([0, 1], [1, 0])


@pytest.mark.parametrize("engine", ENGINES)
def test_streams_are_independent(engine: str) -> None:
    matcher = PatternMatcher.build([pattern(0, "split-literal"), pattern(1, r"split-re\d+x", "regex")], engine)
    first, second = matcher.open(), matcher.open()
    assert first.scan(b"split-") == [] and first.scan(b"re12") == []
    assert second.scan(b"literal re12x") == []
    assert sorted(first.scan(b"x split-literal")) == [0, 1]
    assert second.scan(b"split-literal") == [0]
    first.close()
    second.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_control_matches_nothing(engine: str) -> None:
    markers = [pattern(number, f"marker-{number:03d}") for number in range(50)] + [pattern(50, r"[A-Z]{40}", "regex"), pattern(51, "deadbeef", "hex")]
    matcher = PatternMatcher.build(markers, engine)
    generator = random.Random(7)
    data = bytes(generator.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 -\r\n") for _ in range(20_000))
    assert scan_all(matcher, *(data[start : start + 1400] for start in range(0, len(data), 1400))) == []


@pytest.mark.parametrize("engine", ENGINES)
def test_pickled_matcher_still_streams(engine: str) -> None:
    matcher = PatternMatcher.build([pattern(0, "pickled"), pattern(1, "0001", "hex"), pattern(2, "pick+led", "regex")], engine)
    copy = pickle.loads(pickle.dumps(matcher, pickle.HIGHEST_PROTOCOL))
    assert copy.engine == engine and copy.state_bytes == matcher.state_bytes
    assert sorted(scan_all(copy, b"xxpic", b"kled \x00", b"\x01")) == [0, 1, 2]
    assert sorted(scan_all(matcher, b"pickled \x00\x01")) == [0, 1, 2]


@pytest.mark.parametrize("engine", ENGINES)
def test_anchors_in_a_stream(engine: str) -> None:
    """`^` is the start of the stream (or of what follows a gap), `(?m)^` also follows a line feed,
    and the end of a stream is never known: `$` never matches, `(?m)$` before a line feed does."""
    markers = [pattern(0, "^GET ", "regex"), pattern(1, "(?m)^Host: evil", "regex"), pattern(2, "evil$", "regex"), pattern(3, "(?m)bad$", "regex"), pattern(4, r"x\Z", "regex")]
    matcher = PatternMatcher.build(markers, engine)
    assert sorted(scan_all(matcher, b"GET / HTTP/1.1\r\nHost: evil\r\nX: bad\nevil x")) == [0, 1, 3]
    assert scan_all(matcher, b"x", b"GET ") == []
    assert scan_all(matcher, b"a" * (REGEX_WINDOW + 10), b"GET ") == []
    stream = matcher.open()
    stream.scan(b"POST ")
    stream.reset()
    assert stream.scan(b"GET ") == [0]
    stream.close()
    words = PatternMatcher.build([pattern(0, r"\bcmd\b", "regex")], engine)
    assert scan_all(words, b"run cmd", b"line") == []
    assert scan_all(words, b"run cmd", b" line") == [0]
    assert scan_all(words, b"run cmd") == []


@pytest.mark.parametrize("engine", ENGINES)
def test_python_syntax_is_what_matches(engine: str) -> None:
    """Hyperscan reads PCRE: `{,3}`, `\\Z`, case-folded classes and scoped flags are rewritten so
    that they mean what they mean to Python's `re`."""
    markers = [pattern(0, "xa{,3}y", "regex"), pattern(1, "(?i)[^a]Q", "regex"), pattern(2, "(?i:k)K", "regex"), pattern(3, r"(?x) s p \d # comment", "regex")]
    matcher = PatternMatcher.build(markers, engine)
    assert sorted(scan_all(matcher, b"xaay zq kK sp7")) == [0, 1, 2, 3]
    assert scan_all(matcher, b"xa{,3}y aQ AQ kk Kk s p7") == []


@pytest.mark.parametrize("engine", ENGINES)
def test_engines_agree_with_re_on_random_streams(engine: str) -> None:
    """Random data cut at random places: every engine finds, across the cuts, what `re` finds in
    the whole (patterns shorter than the python mode's window; the data ends with a byte no
    pattern needs, since the end of a stream is never known)."""
    texts = ["abc", "a\x00", "zz", r"a[bc]{2}d", r"(?i)xyz", r"b.c", r"\bcab\b", r"(?m)^ab", r"^ca", r"[^abc]{3}", r"a{2,3}(b|c)", r"(ab)+?c", r"\Bab", r"y$", r"(?m)d$", r"x[^#]+"]
    markers = [pattern(number, text, "literal" if text.isalnum() or "\x00" in text else "regex") for number, text in enumerate(texts)]
    matcher = PatternMatcher.build(markers, engine)
    regexes = [re.compile(marker.value.encode() if marker.encoding == "regex" else re.escape(marker.value.encode())) for marker in markers]
    generator = random.Random(3)
    for _ in range(300):
        data = bytes(generator.choice(b"abcdxyzXYZ \n\x00") for _ in range(generator.randint(1, 60))) + b"#"
        cuts = sorted(generator.sample(range(len(data) + 1), min(len(data) + 1, generator.randint(0, 6))))
        segments = [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)])]
        expected = sorted(position for position, regex in enumerate(regexes) if regex.search(data))
        assert sorted(scan_all(matcher, *segments)) == expected, (data, cuts)


@pytest.mark.skipif(hyperscan is None, reason="hyperscan is not installed on this platform")
def test_regex_hyperscan_cannot_compile_names_the_marker() -> None:
    markers = [pattern(0, "fine"), pattern(1, r"(a)\1", "regex")]
    with pytest.raises(ValueError, match=r"bytes marker p1: Hyperscan cannot compile .*Back-references"):
        PatternMatcher.build(markers, "hyperscan")
    assert scan_all(PatternMatcher.build(markers, "python"), b"aa") == [1]


def test_default_engine_and_empty_set() -> None:
    matcher = PatternMatcher.build([Marker("d", "domain", "example.org", "test", 1)])
    assert matcher.engine == ("hyperscan" if hyperscan is not None else "python")
    assert matcher.patterns == 0 and scan_all(matcher, b"example.org") == []
    with pytest.raises(ValueError, match="unknown pattern engine"):
        PatternMatcher.build([], "pcre")


def test_python_mode_keeps_a_bounded_history() -> None:
    literals = PatternMatcher.build([pattern(0, "twelve-bytes"), pattern(1, "abc")], "python")
    assert literals.state_bytes == 11
    stream = literals.open()
    for _ in range(100):
        stream.scan(bytes(1400))
    assert len(stream._history) == 11  # type: ignore[attr-defined]
    assert PatternMatcher.build([pattern(0, "ab+c", "regex")], "python").state_bytes == REGEX_WINDOW + 1
    assert PatternMatcher.build([pattern(0, r"a[0-9]{2,4}\b", "regex")], "python").state_bytes == 7
    assert PatternMatcher.build([pattern(0, r"(?<=abc)x{2}", "regex")], "python").state_bytes == 5


def test_python_mode_lookarounds_across_scans() -> None:
    """Hyperscan refuses lookarounds; the python mode keeps the bytes they look at."""
    matcher = PatternMatcher.build([pattern(0, r"(?<=key=)[0-9]{3}", "regex"), pattern(1, r"tok(?=en!)", "regex"), pattern(2, r"no(?!pe)", "regex")], "python")
    assert sorted(scan_all(matcher, b"xx key", b"=1", b"23", b" tok", b"e", b"n", b"! no", b"pe")) == [0, 1]
    assert scan_all(matcher, b"key=12 token no", b"x") == []
    assert scan_all(matcher, b"key=12 token no", b"x", b"y") == [2]


def test_yara_markers_map_to_their_positions() -> None:
    two_rules = 'rule first { strings: $a = "alpha" condition: $a }\nrule second { condition: uint16(0) == 0x5a4d }'
    markers = [
        pattern(0, "alpha"),
        rule(1, two_rules),
        rule(2, 'rule other { strings: $b = { 00 FF 00 } condition: $b }'),
        rule(3, 'rule first { strings: $a = "omega" condition: $a }'),
    ]
    matcher = YaraMatcher.build(markers, 1)
    assert matcher.match(b"MZ....alpha") == [1]
    assert matcher.match(b"xx\x00\xff\x00 omega") == [2, 3]
    assert matcher.match(b"nothing here") == []
    copy = pickle.loads(pickle.dumps(matcher, pickle.HIGHEST_PROTOCOL))
    assert copy.match(b"MZ") == [1] and copy.timeouts == copy.errors == 0


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_yara_matchers_built_on_a_reload_thread() -> None:
    """The live service builds each marker set on a reload thread of its own and matches on the
    pipeline's: a YARA-X scanner belongs to the thread that made it (dropped on another, it would
    leak and complain), so the first match makes it."""
    text = 'rule r { strings: $a = "alpha" condition: $a }'
    built: list[YaraMatcher] = []

    def reload() -> None:
        built[:] = [YaraMatcher.build([rule(0, text)], 1)]  # replaces the previous version, unmatched

    for _ in range(3):
        loader = threading.Thread(target=reload)
        loader.start()
        loader.join()
    matcher = built.pop()
    assert matcher.match(b"xx alpha") == [0] and matcher.match(b"beta") == []
    del matcher


def test_yara_rules_written_for_libyara_compile() -> None:
    """Regular expressions as libyara reads them: a lone brace is a brace, an unknown escape the
    letter."""
    matcher = YaraMatcher.build([rule(0, r'rule brace { strings: $a = /ab{/ condition: $a }'), rule(1, r'rule escape { strings: $a = /x\Ry/ condition: $a }')], 1)
    assert matcher.match(b"--ab{--") == [0] and matcher.match(b"xRy") == [1]


def test_yara_slow_rule_times_out_without_raising() -> None:
    slow = "rule slow { condition: for all i in (0..filesize) : (for all j in (0..filesize) : (uint8(i) != 0xff or uint8(j) != 0xfe)) }"
    matcher = YaraMatcher.build([rule(0, slow), rule(1, 'rule quick { strings: $a = "a" condition: $a }')], 1)
    started = time.monotonic()
    assert matcher.match(b"a" * 20_000) == []
    assert time.monotonic() - started < 3
    assert matcher.timeouts == 1 and matcher.errors == 0
    assert matcher.match(b"a") == [1]


def test_yara_include_is_refused() -> None:
    markers = [rule(0, "rule fine { condition: true }"), rule(1, 'include "/etc/passwd"\nrule reader { condition: true }')]
    with pytest.raises(ValueError, match="YARA marker y1: include directives are refused"):
        YaraMatcher.build(markers, 1)
    with pytest.raises(ValueError, match="YARA marker y0: does not compile: .*unknown identifier `filename`"):
        YaraMatcher.build([rule(0, "rule external { condition: filename matches /x/ }")], 1)
    with pytest.raises(ValueError, match="YARA rule: include directives are refused"):  # already when the bundle is read
        compile_yara('include "/etc/passwd"\nrule reader { condition: true }')


def test_yara_console_output_is_discarded(capfd: pytest.CaptureFixture[str]) -> None:
    matcher = YaraMatcher.build([rule(0, 'import "console"\nrule talk { condition: console.hex(uint32(0)) }')], 1)
    assert matcher.match(b"\xde\xad\xbe\xef") == [0]
    assert capfd.readouterr() == ("", "")
