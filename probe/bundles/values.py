"""Marker types and the canonical form of their values, shared by the bundle reader, the importers
and the exporters: a value is normalised once, when it enters a bundle, so that matching and
comparison (duplicates, diffs, round trips) only ever see one spelling of it."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket

MARKER_TYPES = ("ipv4", "ipv6", "cidr", "domain", "http_host", "url", "tls_sni", "ja3", "ja4", "x509_sha256", "bytes", "yara")
LISTABLE_TYPES = MARKER_TYPES[:10]
"""Types whose values fit one line of a companion value file (not patterns or rules)."""
PATTERN_TYPES = ("bytes", "yara")
"""Types whose value may be payload or a detection rule: events never carry it (only id and name)."""
BYTES_ENCODINGS = ("literal", "hex", "regex")

DOMAIN_NAME = re.compile(r"(?!.{254})[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*")
"""A name as DNS carries it: labels of 1-63 letters, digits, `-` or `_` (service and malware
names use it), 253 characters at most; internationalised names are converted to this form."""
LIKELY_HOST_NAME = re.compile(r"(?!.{254})([\w-]{1,63}\.)+[\w-]{1,63}\.?")
"""What a line of a list must look like to be taken for a domain: two labels or more of letters
(any script), digits, `-` and `_`; a bundle's `domain` markers are not held to this."""
UNICODE_NAME = re.compile(r"(?!.{254})[^\s/:@.*<>\"#?]{1,63}(\.[^\s/:@.*<>\"#?]{1,63})*")
"""A name with non-ASCII letters: anything but spaces and URL or markup punctuation."""
HEX_DIGESTS = {"ja3": 32, "x509_sha256": 64}
JA4 = re.compile(r"[tqd][0-9a-z]{2}[di][0-9]{2}[0-9]{2}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}")
"""FoxIO JA4: protocol, TLS version, SNI or IP, cipher and extension counts, ALPN, two hashes."""
URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def value_id(value: str) -> str:
    """The id part that stands for a listed value: a digest, so that an id says nothing of the
    value (an event of a marker above an output's TLP label names it by id only)."""
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def parse_address(value: str) -> tuple[int, str]:
    """(version, canonical text): socket's parser is an order of magnitude faster than ipaddress's
    on feeds of a million addresses, and as strict."""
    for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
        try:
            return version, socket.inet_ntop(family, socket.inet_pton(family, value))
        except OSError:
            continue
    raise ValueError(f"{value!r} is not an IP address")


def normalise_name(value: str) -> str:
    """Lower case, without trailing dot. An internationalised name keeps its letters (mDNS and
    some resolvers carry them as UTF-8); the index also files it under its IDNA form
    (`ascii_name`), the one DNS, SNI and Host headers use."""
    name = value.strip().rstrip(".").lower()
    if name.startswith("*."):
        raise ValueError(f"{value!r}: a wildcard is not a name; give {name[2:]!r} with match 'subdomains'")
    if not (DOMAIN_NAME if name.isascii() else UNICODE_NAME).fullmatch(name):
        raise ValueError(f"{value!r} is not a domain name")
    return name


def ascii_name(name: str) -> str | None:
    """The IDNA (`xn--`) form of a name with non-ASCII letters, or None when it has none (or none
    that IDNA accepts)."""
    if name.isascii():
        return None
    try:
        converted = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    return converted if DOMAIN_NAME.fullmatch(converted) else None


def normalise_url(value: str) -> str:
    """Scheme-less `host[:port]/path` with a lower-case host; the path keeps its case (servers
    may tell it apart) and defaults to `/`, so a bare host matches every request to it."""
    text = URL_SCHEME.sub("", value.strip())
    host, slash, path = text.partition("/")
    host = host.rpartition("@")[2].lower().rstrip(".")
    name, colon, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if colon and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{value!r}: port {port!r} is not a port number")
    if not host or not (DOMAIN_NAME.fullmatch(name if colon else host) or _is_address((name if colon else host).strip("[]"))):
        raise ValueError(f"{value!r} is not a host and path (scheme-less URL)")
    if any(character.isspace() for character in path):
        raise ValueError(f"{value!r}: a URL path has no spaces")
    return f"{host}/{path}" if slash else f"{host}/"


def _is_address(text: str) -> bool:
    try:
        parse_address(text)
    except ValueError:
        return False
    return True


def normalise_value(marker_type: str, value: str, encoding: str = "literal") -> tuple[str, str]:
    """(type, canonical value) of a marker value; raises ValueError saying what is wrong.
    The type `address` takes either IP version and answers which."""
    if marker_type in ("ipv4", "ipv6", "address"):
        version, text = parse_address(value.strip())
        if marker_type != "address" and f"ipv{version}" != marker_type:
            raise ValueError(f"{value!r} is an IPv{version} address, not {marker_type}")
        return f"ipv{version}", text
    if marker_type == "cidr":
        try:
            return "cidr", str(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network (address/prefix length)") from None
    if marker_type in ("domain", "tls_sni"):
        return marker_type, normalise_name(value)
    if marker_type == "http_host":
        host = value.strip().lower().rstrip(".")
        if _is_address(host.strip("[]")):
            return marker_type, parse_address(host.strip("[]"))[1]
        if not DOMAIN_NAME.fullmatch(host):
            raise ValueError(f"{value!r} is not a host name or address (without port)")
        return marker_type, host
    if marker_type == "url":
        return marker_type, normalise_url(value)
    if marker_type in HEX_DIGESTS:
        digest = value.strip().lower().replace(":", "")
        if len(digest) != HEX_DIGESTS[marker_type] or not all(character in "0123456789abcdef" for character in digest):
            raise ValueError(f"{value!r} is not {HEX_DIGESTS[marker_type]} hexadecimal digits")
        return marker_type, digest
    if marker_type == "ja4":
        fingerprint = value.strip().lower()
        if not JA4.fullmatch(fingerprint):
            raise ValueError(f"{value!r} is not a JA4 fingerprint (e.g. t13d1516h2_8daaf6152771_02713d6af862)")
        return marker_type, fingerprint
    if marker_type == "bytes":
        return marker_type, normalise_pattern(value, encoding)
    if marker_type == "yara":
        compile_yara(value)
        return marker_type, value
    raise ValueError(f"unknown marker type {marker_type!r} (known: {', '.join(MARKER_TYPES)})")


def normalise_pattern(value: str, encoding: str) -> str:
    """A `bytes` marker's pattern: literal text, hex digits (spaces allowed) or a regular
    expression over bytes; an empty pattern would match every packet and is refused."""
    if encoding == "literal":
        if not value:
            raise ValueError("empty byte pattern")
        return value
    if encoding == "hex":
        digits = "".join(value.split()).lower()
        try:
            if not bytes.fromhex(digits):
                raise ValueError("empty byte pattern")
        except ValueError as error:
            raise ValueError(f"{value!r} is not hexadecimal bytes ({error})") from None
        return digits
    if encoding == "regex":
        try:
            compiled = re.compile(value.encode("utf-8", "surrogateescape"))
        except re.error as error:
            raise ValueError(f"invalid regular expression: {error}") from None
        if compiled.fullmatch(b""):
            raise ValueError("the regular expression matches the empty string, so every packet")
        return value
    raise ValueError(f"'encoding' must be one of {', '.join(BYTES_ENCODINGS)}, got {encoding!r}")


def compile_yara(text: str) -> None:
    """Refuse a rule that does not compile now rather than when matching would need it. The rule
    is only checked (parsed and type-checked), not built into code: a third of the time."""
    from probe.match.yara_rules import add_rule, new_compiler  # only bundles with YARA markers load YARA-X

    if not text.strip():
        raise ValueError("empty YARA rule text")
    try:
        add_rule(new_compiler(), text)
    except ValueError as error:
        raise ValueError(f"YARA rule: {error}") from None


def detect_type(value: str) -> tuple[str, str]:
    """Type and canonical value of one line of a plain list, guessed from its shape: an address,
    a network, a 32- or 64-digit hex digest (JA3 MD5, certificate SHA-256), a JA4, a URL (it has
    a scheme or a path), else a domain name. Raises ValueError when nothing fits."""
    text = value.strip()
    if "/" in text and not URL_SCHEME.match(text):
        try:
            return normalise_value("cidr", text)
        except ValueError:
            pass
    try:
        return normalise_value("address", text)
    except ValueError:
        pass
    lowered = text.lower()
    if len(lowered) in (32, 64) and all(character in "0123456789abcdef" for character in lowered):
        return ("ja3", lowered) if len(lowered) == 32 else ("x509_sha256", lowered)
    if JA4.fullmatch(lowered):
        return "ja4", lowered
    if URL_SCHEME.match(text) or "/" in text:
        return normalise_value("url", text)
    if LIKELY_HOST_NAME.fullmatch(text):
        return normalise_value("domain", text)
    raise ValueError(f"{value!r} is not an address, network, hash, JA4, URL or domain name")
