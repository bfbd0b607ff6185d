"""Checks at the gateway's front door (no I/O): who the client really is (its IP behind
trusted proxies), where a browser page comes from (its Origin), and whether a frame is
cheap enough to parse.

Frame complexity
----------------
A 1 MiB frame is small for the network but can be expensive to parse: 1 MiB of nested
``[[[…]]]`` or ``[[],[],…]`` makes the JSON parser allocate hundreds of thousands of
containers (measured: about a second of event-loop time in pydantic + orjson for one frame),
and a few hundred thousand keys cost tens of milliseconds. No client message needs that:
the deepest one (``auth`` with ``positions``) nests 4 levels and has a few hundred values.
:func:`check_frame` bounds nesting depth, containers, values and strings *before* the
parser sees the frame. The common case costs two ``str.count`` calls (0.3 µs for a typical
200-byte message, against about 2 µs for its validation): a frame with at most
``MAX_DEPTH`` brackets and ``MAX_ITEMS`` commas cannot exceed any bound. Only frames
with more (e.g. a command full of code) are scanned exactly, with the strings cut out by
one regular expression whose work is bounded by ``MAX_STRINGS``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from shared.errors import ErrorCode, ProtocolError

# -- frames -------------------------------------------------------------------------------

#: Deepest nesting of objects and arrays accepted (client messages need 4).
MAX_DEPTH = 16
#: Most objects and arrays in one frame (``auth`` with 200 ``positions`` needs ~200).
MAX_CONTAINERS = 512
#: Most values in one frame, counted as commas outside strings.
MAX_ITEMS = 2048
#: Most strings (keys included) in one frame.
MAX_STRINGS = 4096

_STRING = re.compile(r'"[^"]*"')
_STRING_B = re.compile(rb'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_NOT_BRACKET_B = re.compile(rb"[^\[\]{}]+")


def _too_complex(what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, f"message too complex: {what}")


def check_frame(raw: str | bytes) -> None:
    """Raise INVALID_MESSAGE when ``raw`` nests deeper than ``MAX_DEPTH`` or holds more than
    ``MAX_CONTAINERS`` objects/arrays, ``MAX_ITEMS`` values or ``MAX_STRINGS`` strings.
    Not a JSON validator: malformed JSON is left to the parser."""
    # Fast path: few brackets (so no deep nesting, few containers) and few commas (so few
    # values; a frame shorter than MAX_ITEMS cannot have more commas than that).
    small = len(raw) <= MAX_ITEMS
    if isinstance(raw, str):
        if raw.count("{") + raw.count("[") <= MAX_DEPTH and (small or raw.count(",") <= MAX_ITEMS):
            return
        _check_structure(raw)
    else:
        if raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH and (
            small or raw.count(b",") <= MAX_ITEMS
        ):
            return
        _check_structure(raw.decode("utf-8", "replace"))


def _check_structure(text: str) -> None:
    # Escapes out first, so that a string is just "…" without quotes inside.
    if "\\" in text:
        text = text.replace("\\\\", "").replace('\\"', "")
    if text.count('"') > 2 * MAX_STRINGS:
        raise _too_complex(f"more than {MAX_STRINGS} strings")
    outside = _STRING.sub("", text)
    if outside.count(",") > MAX_ITEMS:
        raise _too_complex(f"more than {MAX_ITEMS} values")
    brackets = _NOT_BRACKET.sub("", outside)
    if len(brackets) > 2 * MAX_CONTAINERS:
        raise _too_complex(f"more than {MAX_CONTAINERS} objects and arrays")
    depth = 0
    for ch in brackets:
        if ch == "{" or ch == "[":
            depth += 1
            if depth > MAX_DEPTH:
                raise _too_complex(f"nested deeper than {MAX_DEPTH} levels")
        else:
            depth -= 1


# -- client addresses ---------------------------------------------------------------------

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# Cached: every connection parses its peer three times (the handshake check, the
# connection, its rate-limit key), ~4 µs each in ipaddress; clients come from few addresses.
@functools.lru_cache(maxsize=4096)
def parse_ip(text: str | None) -> IPAddress | None:
    """An address from a socket peer or an X-Forwarded-For hop (``1.2.3.4``, ``1.2.3.4:80``,
    ``::1``, ``[::1]:80``); IPv4-mapped IPv6 becomes IPv4. None when it is not one."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: IPAddress, trusted: Iterable[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in trusted)


def client_ip(
    peer: str | None, forwarded_for: Iterable[str], trusted: tuple[IPNetwork, ...]
) -> str:
    """The client's address: the TCP peer, unless the peer is a trusted proxy; then the
    right-most X-Forwarded-For hop that is not a trusted proxy (hops left of it were written
    by the client and prove nothing). ``forwarded_for``: every X-Forwarded-For header value,
    in order. When every hop is trusted, the left-most; a hop that is not an address ends
    the walk at the last trusted one."""
    addr = parse_ip(peer)
    if addr is None:
        return peer or "unknown"
    if not trusted or not _trusted(addr, trusted):
        return str(addr)
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        parsed = parse_ip(hop)
        if parsed is None:
            break
        addr = parsed
        if not _trusted(addr, trusted):
            break
    return str(addr)


def limit_key(ip: str) -> str:
    """The key an address is rate-limited under: IPv4 as is, IPv6 by its /64 (one host
    usually owns a whole /64, so per-address limits would be free to dodge)."""
    addr = parse_ip(ip)
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return ip


# -- origins ------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(value: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port, ``null`` as is; None
    when ``value`` is not an origin (it has a path, a query, credentials…)."""
    value = value.strip()
    if value.lower() == "null":
        return "null"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if (
        not parts.scheme
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or parts.password is not None
    ):
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_allowed(headers: list[str], allowed: frozenset[str] | None) -> bool:
    """Whether a handshake with these ``Origin`` header values may proceed: always without
    an Origin (not a browser: browsers always send one on WebSocket handshakes), else the
    single Origin must be on the ``allowed`` list (None = any)."""
    if allowed is None or not headers:
        return True
    if len(headers) > 1:
        return False
    origin = normalize_origin(headers[0])
    return origin is not None and origin in allowed
