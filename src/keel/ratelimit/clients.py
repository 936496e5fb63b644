"""Who is the client? The rate-limit key of an anonymous request (SPEC §5).

The client is the socket peer, unless the peer is a trusted proxy (`KEEL_TRUSTED_PROXIES`); then it is the
right-most untrusted hop of the one forwarding header those proxies write (`KEEL_PROXY_HEADER`). Only hops written
by trusted proxies are believed, so a client can never pick its own key by sending headers: whatever it sends lands
to the left of the entry its first trusted proxy adds, and the walk stops at that entry.

Exactly one header is read, and the others are ignored. A proxy passes the headers it does not write through from
the client untouched: nginx's usual configuration appends to `X-Forwarded-For` and forwards a client's `Forwarded`
as it came, so preferring `Forwarded` whenever present let any client choose its own key.

Framework-free: it takes the ASGI peer host (`scope["client"][0]`) and the raw ASGI header pairs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final

__all__ = ["MAX_FORWARDING_HEADER_BYTES", "PROXY_HEADERS", "ClientResolver"]

IPAddress = IPv4Address | IPv6Address

#: A forwarding header (all its lines together) longer than this is ignored: the peer is the client.
MAX_FORWARDING_HEADER_BYTES: Final = 8192

_UNKNOWN: Final = "unknown"
_FORWARDED: Final = b"forwarded"
_X_FORWARDED_FOR: Final = b"x-forwarded-for"
_X_REAL_IP: Final = b"x-real-ip"
#: The forwarding headers a proxy may be configured to write, by their usual spelling (`KEEL_PROXY_HEADER`).
PROXY_HEADERS: Final = {"X-Forwarded-For": _X_FORWARDED_FOR, "Forwarded": _FORWARDED, "X-Real-IP": _X_REAL_IP}
_IPV4_MAPPED: Final = IPv6Network("::ffff:0:0/96")
_MAX_NODE_CHARS: Final = 128  # "[<IPv6 with a zone id>]:<port>" fits comfortably
_CACHE_SIZE: Final = 4096

# RFC 7239 §4: forwarded-element = [ pair ] *( ";" [ pair ] ); pair = token "=" value; value = token / quoted-string
# (RFC 7230 §3.2.6), the elements a comma-separated list (RFC 7230 §7, empty elements allowed). Whitespace around ";"
# and "=" is tolerated. Possessive quantifiers (Python 3.11) keep matching linear on hostile input.
_TCHARS: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z-]++"
_QUOTED: Final = r'"(?:[^"\\]++|\\.)*+"'
_PAIR: Final = rf"{_TCHARS}[ \t]*+=[ \t]*+(?:{_TCHARS}|{_QUOTED})"
_ELEMENT: Final = rf"{_PAIR}(?:[ \t]*+;[ \t]*+{_PAIR})*+"
_FORWARDED_LINE: Final = re.compile(rf"[ \t]*+(?:{_ELEMENT})?+(?:[ \t]*+,[ \t]*+(?:{_ELEMENT})?+)*+[ \t]*+", re.DOTALL)
# Over a line that matched the above: every comma between elements, and every pair (quoted values whole).
_FORWARDED_PARTS: Final = re.compile(
    rf'(,)|({_TCHARS})[ \t]*+=[ \t]*+(?:({_TCHARS})|"((?:[^"\\]++|\\.)*+)")', re.DOTALL
)
_QUOTED_PAIR: Final = re.compile(r"\\(.)", re.DOTALL)
# RFC 7239 §6: node-port = port / obfport
_PORT: Final = re.compile(r"[0-9]{1,5}|_[0-9A-Za-z._-]+")

# (the address as text, its rate-limit key, whether it is a trusted proxy)
_Client = tuple[str, str, bool]


class _Malformed(ValueError):
    """A forwarding header that does not parse: the peer is the client."""


def _normalize(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`, dual-stack sockets) is the IPv4 address it maps."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parse_node(node: str) -> IPAddress | None:
    """One hop: `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80`, `2001:db8::1`; else None.

    Obfuscated identifiers (`_hidden`) and `unknown` (RFC 7239 §6) are not addresses, so they give None too.
    """
    node = node.strip(" \t")
    if not node or len(node) > _MAX_NODE_CHARS:
        return None
    host = node
    if node[0] == "[":
        end = node.find("]")
        if end < 0:
            return None
        host, rest = node[1:end], node[end + 1 :]
        if rest and not (rest[0] == ":" and _PORT.fullmatch(rest, 1)):
            return None
        if ":" not in host:  # brackets are only for IPv6
            return None
    elif node.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has at least two colons
        host, port = node.split(":")
        if not _PORT.fullmatch(port):
            return None
    try:
        return _normalize(ip_address(host))
    except ValueError:
        return None


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _forwarded_nodes(line: str) -> tuple[str | None, ...] | None:
    """The `for=` value of every element of one `Forwarded` line, None for an element without one; None if the line
    is malformed (a syntax error, or `for` twice in one element). Empty elements are skipped."""
    if _FORWARDED_LINE.fullmatch(line) is None:
        return None
    nodes: list[str | None] = []
    node: str | None = None
    in_element = False
    for part in _FORWARDED_PARTS.finditer(line):
        comma, name, token, quoted = part.groups()
        if comma is not None:
            if in_element:
                nodes.append(node)
            node, in_element = None, False
            continue
        in_element = True
        if name.lower() == "for":
            if node is not None:
                return None
            node = token if token is not None else _QUOTED_PAIR.sub(r"\1", quoted)
    if in_element:
        nodes.append(node)
    return tuple(nodes)


def _forwarding_nodes(headers: Iterable[tuple[bytes, bytes]], wanted: bytes) -> list[str | None]:
    """The hops of the header `wanted`, left (the original client) to right (the last proxy), unparsed; None for a
    `Forwarded` element that names no `for=` node. Repeated lines are one list, in order."""
    values = [value for name, value in headers if name == wanted]  # ASGI header names are lowercase
    if not values:
        return []
    if (len(values[0]) if len(values) == 1 else sum(map(len, values)) + len(values)) > MAX_FORWARDING_HEADER_BYTES:
        raise _Malformed("header too long")
    if wanted == _FORWARDED:
        nodes: list[str | None] = []
        for value in values:  # each line parses on its own: a client's unbalanced quote cannot swallow a proxy's line
            parsed = _forwarded_nodes(value.decode("latin-1"))
            if parsed is None:
                raise _Malformed("Forwarded")
            nodes.extend(parsed)
        return nodes
    text = (values[0] if len(values) == 1 else b",".join(values)).decode("latin-1")
    found: list[str | None] = [node for node in text.split(",") if node and not node.isspace()]
    if wanted == _X_REAL_IP and len(found) != 1:
        # X-Real-IP is one address set (replaced, not appended to) by the proxy in front; several are ambiguous
        raise _Malformed("several X-Real-IP values")
    return found


class ClientResolver:
    """The client address and rate-limit key of a request, given the trusted proxy networks.

    Build one per application from `Settings.trusted_proxies` and `Settings.proxy_header`; it is immutable and safe
    to share. What it learns about each peer and hop string (parsed, trusted or not, its key) is kept in two bounded
    LRU caches.
    """

    __slots__ = ("_header", "_hop", "_peer", "_trusted_v4", "_trusted_v6", "_trusting")

    def __init__(self, trusted_proxies: Sequence[IPv4Network | IPv6Network], header: str = "X-Forwarded-For") -> None:
        self._header = PROXY_HEADERS[header]
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for network in trusted_proxies:
            if isinstance(network, IPv6Network) and network.subnet_of(_IPV4_MAPPED):
                # peers and hops are normalized to IPv4, so `::ffff:10.0.0.0/104` must mean 10.0.0.0/8
                network = IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
            bucket = v4 if isinstance(network, IPv4Network) else v6
            bucket.append((int(network.network_address), int(network.netmask)))
        self._trusted_v4: tuple[tuple[int, int], ...] = tuple(v4)
        self._trusted_v6: tuple[tuple[int, int], ...] = tuple(v6)
        self._trusting = bool(v4 or v6)
        self._peer: Callable[[str | None], _Client] = functools.lru_cache(maxsize=_CACHE_SIZE)(self._describe_peer)
        self._hop: Callable[[str], _Client | None] = functools.lru_cache(maxsize=_CACHE_SIZE)(self._describe_hop)

    def client_ip(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The client's address: the peer, or, if the peer is a trusted proxy, who it forwarded for.

        `peer` is the ASGI `scope["client"][0]`: an address (returned in canonical form, IPv4-mapped IPv6 as IPv4),
        or something else such as "testclient" or a unix socket path (returned as is; never trusted), or None or ""
        ("unknown"). With no trusted proxies configured the headers are never looked at.
        """
        # the access line and the limiter's key ask on every request: a peer that is not a trusted proxy (every
        # peer, unless KEEL_TRUSTED_PROXIES is set) is answered from the cache without a Python call of its own
        client = self._peer(peer)
        return client[0] if not client[2] else self._forwarded(client, headers)[0]

    def rate_key(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """`ip:1.2.3.4`, `ip:2001:db8:1:2::/64` (one key per IPv6 /64, what one subscriber is usually given) or
        `peer:<value>` for a peer that is not an address."""
        client = self._peer(peer)
        return client[1] if not client[2] else self._forwarded(client, headers)[1]

    def _forwarded(self, client: _Client, headers: Iterable[tuple[bytes, bytes]]) -> _Client:
        """Who a trusted proxy (`client`) forwarded for."""
        try:
            nodes = _forwarding_nodes(headers, self._header)
        except _Malformed:
            return client
        # Right to left: skip the trusted proxies; the first hop that is not one is the client.
        for node in reversed(nodes):
            hop = None if node is None else self._hop(node)
            if hop is None:
                # The hop a trusted proxy reported is obfuscated, "unknown" or garbage. Anything further left was
                # written by someone we do not trust, so the only safe answer is the peer: a client can land here
                # (by sending `for=_x`) but then shares the proxy's key, it never picks a key of its own.
                return client
            if not hop[2]:
                return hop
        # No forwarding header (the proxy itself calling), or every hop a trusted proxy (say, a health check from
        # inside the load balancer): the left-most.
        first = self._hop(nodes[0]) if nodes and nodes[0] is not None else None
        return first or client

    def _describe_peer(self, peer: str | None) -> _Client:
        if not peer:
            return (_UNKNOWN, f"peer:{_UNKNOWN}", False)
        try:
            address = _normalize(ip_address(peer))
        except ValueError:
            return (peer, f"peer:{peer}", False)  # "testclient", a unix socket path: never a trusted proxy
        return (str(address), _key(address), self._is_trusted(address))

    def _describe_hop(self, node: str) -> _Client | None:
        address = _parse_node(node)
        return None if address is None else (str(address), _key(address), self._is_trusted(address))

    def _is_trusted(self, address: IPAddress) -> bool:
        value = int(address)
        networks = self._trusted_v4 if address.version == 4 else self._trusted_v6
        return any(value & mask == network for network, mask in networks)


def _key(address: IPAddress) -> str:
    if isinstance(address, IPv4Address):
        return f"ip:{address}"
    return f"ip:{IPv6Network((int(address) >> 64 << 64, 64))}"
