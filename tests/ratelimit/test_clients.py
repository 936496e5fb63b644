"""Client address and rate-limit key (SPEC §5): a client can never pick its own key by sending headers."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.ratelimit.clients import MAX_FORWARDING_HEADER_BYTES, PROXY_HEADERS, ClientResolver

Headers = list[tuple[bytes, bytes]]

PROXY = "10.0.0.1"  # the socket peer: the load balancer
INNER_PROXY = "10.0.0.2"  # a second trusted proxy in front of it
CLIENT = "203.0.113.7"
ATTACKER = "198.51.100.66"


def resolver(*cidrs: str, header: str = "X-Forwarded-For") -> ClientResolver:
    networks: list[IPv4Network | IPv6Network] = [ip_network(cidr, strict=False) for cidr in cidrs]
    return ClientResolver(networks, header)


TRUSTING = resolver("10.0.0.0/8", "fd00::/8")  # behind a proxy that writes X-Forwarded-For (the default)
FORWARDED = resolver("10.0.0.0/8", "fd00::/8", header="Forwarded")
REAL_IP = resolver("10.0.0.0/8", "fd00::/8", header="X-Real-IP")
NOBODY = resolver()


def xff(*values: str) -> Headers:
    return [(b"x-forwarded-for", value.encode("latin-1")) for value in values]


def fwd(*values: str) -> Headers:
    return [(b"forwarded", value.encode("latin-1")) for value in values]


# --- who is trusted -------------------------------------------------------------------------------------------------


def test_spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    headers = xff(ATTACKER)
    assert TRUSTING.client_ip(CLIENT, headers) == CLIENT
    assert TRUSTING.rate_key(CLIENT, headers) == f"ip:{CLIENT}"
    assert FORWARDED.rate_key(CLIENT, fwd(f"for={ATTACKER}")) == f"ip:{CLIENT}"
    assert REAL_IP.rate_key(CLIENT, [(b"x-real-ip", ATTACKER.encode())]) == f"ip:{CLIENT}"


def test_with_no_trusted_proxies_headers_are_never_looked_at() -> None:
    class Exploding:
        def __iter__(self) -> object:
            raise AssertionError("headers were read")

    assert NOBODY.client_ip(PROXY, Exploding()) == PROXY  # type: ignore[arg-type]
    assert NOBODY.rate_key(PROXY, Exploding()) == f"ip:{PROXY}"  # type: ignore[arg-type]


def test_x_forwarded_for_from_a_trusted_proxy_is_honoured() -> None:
    assert TRUSTING.client_ip(PROXY, xff(CLIENT)) == CLIENT
    assert TRUSTING.rate_key(PROXY, xff(CLIENT)) == f"ip:{CLIENT}"


def test_the_right_most_untrusted_hop_behind_two_trusted_proxies() -> None:
    # the attacker's spoofed entry is left of the client's real address, which the inner proxy appended
    headers = xff(f"{ATTACKER}, {CLIENT}, {INNER_PROXY}")
    assert TRUSTING.client_ip(PROXY, headers) == CLIENT


def test_every_hop_trusted_gives_the_left_most() -> None:
    assert TRUSTING.client_ip(PROXY, xff(f"10.9.9.9, {INNER_PROXY}")) == "10.9.9.9"


def test_a_trusted_peer_without_forwarding_headers_is_the_client() -> None:
    assert TRUSTING.client_ip(PROXY, [(b"host", b"example.com")]) == PROXY
    assert TRUSTING.client_ip(PROXY, []) == PROXY


def test_ipv4_mapped_trusted_networks_match_ipv4_peers() -> None:
    mapped = resolver("::ffff:10.0.0.0/104")
    assert mapped.client_ip(PROXY, xff(CLIENT)) == CLIENT
    assert mapped.client_ip(f"::ffff:{PROXY}", xff(CLIENT)) == CLIENT


def test_ipv6_trusted_proxies() -> None:
    assert TRUSTING.client_ip("fd00::1", xff("2001:db8::5")) == "2001:db8::5"
    assert TRUSTING.client_ip("2001:db8::9", xff("2001:db8::5")) == "2001:db8::9"


# --- Forwarded (RFC 7239) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ('for="[2001:db8:cafe::17]"', "2001:db8:cafe::17"),
        ('for="192.0.2.43:47011"', "192.0.2.43"),
        ("for=192.0.2.43", "192.0.2.43"),
        ('for="192.0.2.43:_port"', "192.0.2.43"),
        ("For=192.0.2.43", "192.0.2.43"),
        ("FOR=192.0.2.43;Proto=https;BY=10.0.0.1", "192.0.2.43"),
        ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
        ("proto=https; for=192.0.2.43 ; host=example.com", "192.0.2.43"),
        ('for="\\192.0.2.43"', "192.0.2.43"),  # a quoted-pair
        (f"for={ATTACKER}, for={CLIENT}, for={INNER_PROXY}", CLIENT),
        (f"for={ATTACKER},for={CLIENT} ,, for={INNER_PROXY},", CLIENT),  # empty list elements
        ('host="a,b;c";for=192.0.2.43', "192.0.2.43"),  # separators inside quotes
        ("for=10.3.3.3, for=10.4.4.4", "10.3.3.3"),  # every hop trusted
    ],
)
def test_forwarded(value: str, expected: str) -> None:
    assert FORWARDED.client_ip(PROXY, fwd(value)) == expected


@pytest.mark.parametrize(
    "value",
    [
        "for=_hidden",
        "for=unknown",
        'for="_gazonk"',
        "for=unknown, for=10.0.0.2",  # unknown behind a trusted proxy
        f"for={ATTACKER}, for=_hidden",  # the attacker's entry is further left: never reached
        "proto=https",  # an element without for=
        f"for={ATTACKER}, by=10.0.0.2",
        "for=not-an-ip",
        'for="[2001:db8::1"',
        'for="[192.0.2.1]"',  # brackets are for IPv6 only
        'for="192.0.2.1:"',
        'for="192.0.2.1:port"',
        "for=2001:db8::1:80:x",
    ],
)
def test_obfuscated_unknown_or_unusable_hops_give_the_peer(value: str) -> None:
    assert FORWARDED.client_ip(PROXY, fwd(value)) == PROXY


@pytest.mark.parametrize(
    "value",
    [
        f'for="{CLIENT}',  # unterminated quote
        f"for={CLIENT};for={ATTACKER}",  # a parameter twice in one element
        f"for {CLIENT}",
        f"for=={CLIENT}",
        f"for={CLIENT} x",
        f"for={CLIENT};",
        "=",
        ";",
        f"for=@{CLIENT}",
        "for=192.0.2.43:47011",  # a port (or IPv6) must be quoted: ":" is not a token character
        "for=[2001:db8::1]",
    ],
)
def test_a_malformed_forwarded_header_gives_the_peer(value: str) -> None:
    assert FORWARDED.client_ip(PROXY, fwd(value)) == PROXY


def test_a_malformed_forwarded_header_does_not_fall_back_to_x_forwarded_for() -> None:
    # the proxy writes Forwarded and passes the client's X-Forwarded-For through untouched
    headers = [*fwd('for="oops'), *xff(ATTACKER)]
    assert FORWARDED.client_ip(PROXY, headers) == PROXY


def test_an_unbalanced_quote_cannot_swallow_the_proxys_line() -> None:
    # each Forwarded line parses on its own: the client's broken line is malformed, so the peer is used
    assert FORWARDED.client_ip(PROXY, fwd(f'for="{ATTACKER}', f"for={CLIENT}")) == PROXY


# --- one configured header, repeated lines, limits ------------------------------------------------------------------


def test_only_the_configured_header_is_read() -> None:
    # the probe's bypass: nginx appends to X-Forwarded-For and passes the client's own Forwarded through untouched;
    # Forwarded used to win, so each request could name a fresh key
    for i in range(5):
        headers = [*fwd(f"for=198.51.100.{i}"), *xff(CLIENT), (b"x-real-ip", f"198.51.100.{i}".encode())]
        assert TRUSTING.rate_key(PROXY, headers) == f"ip:{CLIENT}"
    # a proxy that writes only X-Real-IP: the client's X-Forwarded-For and Forwarded are its own words
    headers = [*xff(ATTACKER), *fwd(f"for={ATTACKER}"), (b"x-real-ip", CLIENT.encode())]
    assert REAL_IP.client_ip(PROXY, headers) == CLIENT
    # a proxy that writes Forwarded: the client's X-Forwarded-For is ignored
    assert FORWARDED.client_ip(PROXY, [*xff(ATTACKER), *fwd(f"for={CLIENT}")]) == CLIENT


def test_a_missing_configured_header_gives_the_peer_not_another_header() -> None:
    assert TRUSTING.client_ip(PROXY, [*fwd(f"for={ATTACKER}"), (b"x-real-ip", ATTACKER.encode())]) == PROXY
    assert REAL_IP.client_ip(PROXY, xff(ATTACKER)) == PROXY
    assert FORWARDED.client_ip(PROXY, xff(ATTACKER)) == PROXY


def test_x_real_ip_is_one_address() -> None:
    assert REAL_IP.client_ip(PROXY, [(b"x-real-ip", CLIENT.encode())]) == CLIENT
    assert REAL_IP.client_ip(PROXY, [(b"x-real-ip", b" [2001:db8::1]:443 ")]) == "2001:db8::1"
    assert REAL_IP.client_ip(PROXY, [(b"x-real-ip", f"{ATTACKER}, {CLIENT}".encode())]) == PROXY
    assert REAL_IP.client_ip(PROXY, [(b"x-real-ip", b"1.1.1.1"), (b"x-real-ip", b"2.2.2.2")]) == PROXY
    assert REAL_IP.client_ip(PROXY, [(b"x-real-ip", b"")]) == PROXY


def test_header_names_are_matched_as_asgi_gives_them_lowercase() -> None:
    assert TRUSTING.client_ip(PROXY, [(b"X-Forwarded-For", CLIENT.encode())]) == PROXY


def test_repeated_header_lines_join_in_order() -> None:
    assert TRUSTING.client_ip(PROXY, xff(ATTACKER, f"{CLIENT}, {INNER_PROXY}")) == CLIENT
    assert TRUSTING.client_ip(PROXY, xff(f"{ATTACKER}, {CLIENT}", INNER_PROXY)) == CLIENT
    assert FORWARDED.client_ip(PROXY, fwd(f"for={ATTACKER}", f"for={CLIENT}", f"for={INNER_PROXY}")) == CLIENT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"  {CLIENT}  ", CLIENT),
        (f"{CLIENT}:8080", CLIENT),
        ("[2001:db8::1]:8080", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:192.0.2.9", "192.0.2.9"),
        (f"{ATTACKER},,{CLIENT}, ,", CLIENT),
        (f"{ATTACKER}, garbage", PROXY),
        (f"{ATTACKER}, unknown, {INNER_PROXY}", PROXY),
        ("999.1.1.1", PROXY),
        ("01.2.3.4", PROXY),
        ("1.2.3.4:99999999", PROXY),
        ("[2001:db8::1]x", PROXY),
        ('"192.0.2.1"', PROXY),
        ("", PROXY),
        (",", PROXY),
        ("x" * 200, PROXY),
    ],
)
def test_x_forwarded_for_values(value: str, expected: str) -> None:
    assert TRUSTING.client_ip(PROXY, xff(value)) == expected


def test_absurdly_long_headers_are_ignored() -> None:
    long_chain = ", ".join(["10.1.1.1"] * (MAX_FORWARDING_HEADER_BYTES // 10 + 1)) + f", {CLIENT}"
    assert len(long_chain) > MAX_FORWARDING_HEADER_BYTES
    assert TRUSTING.client_ip(PROXY, xff(long_chain)) == PROXY
    many_lines = xff(*["10.1.1.1"] * (MAX_FORWARDING_HEADER_BYTES // 8), CLIENT)
    assert TRUSTING.client_ip(PROXY, many_lines) == PROXY
    assert TRUSTING.client_ip(PROXY, xff("10.1.1.1, " * 10 + CLIENT)) == CLIENT


def test_latin1_and_non_ascii_bytes_are_not_addresses() -> None:
    assert TRUSTING.client_ip(PROXY, [(b"x-forwarded-for", "1.2.3.\u00b2".encode("latin-1"))]) == PROXY
    assert TRUSTING.client_ip(PROXY, [(b"x-forwarded-for", b"\xff\xfe")]) == PROXY


# --- keys -----------------------------------------------------------------------------------------------------------


def test_ipv4_keys() -> None:
    assert NOBODY.rate_key("192.0.2.1", []) == "ip:192.0.2.1"
    assert NOBODY.rate_key("192.0.2.1", []) != NOBODY.rate_key("192.0.2.2", [])


def test_ipv6_clients_are_keyed_by_their_64() -> None:
    one = NOBODY.rate_key("2001:db8:1:2::1", [])
    assert one == "ip:2001:db8:1:2::/64"
    assert NOBODY.rate_key("2001:db8:1:2:ffff:ffff:ffff:ffff", []) == one
    assert NOBODY.rate_key("2001:db8:1:3::1", []) != one
    assert NOBODY.client_ip("2001:db8:1:2::1", []) == "2001:db8:1:2::1"  # the address itself is kept
    assert TRUSTING.rate_key(PROXY, xff("2001:db8:1:2::99")) == one
    assert NOBODY.rate_key("fe80::1%eth0", []) == "ip:fe80::/64"


def test_ipv4_mapped_ipv6_counts_as_ipv4() -> None:
    assert NOBODY.client_ip("::ffff:192.0.2.1", []) == "192.0.2.1"
    assert NOBODY.rate_key("::ffff:192.0.2.1", []) == "ip:192.0.2.1"
    assert TRUSTING.rate_key(f"::ffff:{PROXY}", xff(CLIENT)) == f"ip:{CLIENT}"


@pytest.mark.parametrize("resolve", [NOBODY, TRUSTING], ids=["nobody", "trusting"])
def test_non_ip_peers(resolve: ClientResolver) -> None:
    assert resolve.client_ip("testclient", xff(CLIENT)) == "testclient"
    assert resolve.rate_key("testclient", xff(CLIENT)) == "peer:testclient"
    assert resolve.rate_key("/run/keel.sock", xff(CLIENT)) == "peer:/run/keel.sock"


@pytest.mark.parametrize("resolve", [NOBODY, TRUSTING], ids=["nobody", "trusting"])
def test_a_missing_peer(resolve: ClientResolver) -> None:
    assert resolve.client_ip(None, xff(CLIENT)) == "unknown"
    assert resolve.rate_key(None, xff(CLIENT)) == "peer:unknown"
    assert resolve.rate_key("", xff(CLIENT)) == "peer:unknown"


# --- properties -----------------------------------------------------------------------------------------------------

_names = st.sampled_from([b"forwarded", b"x-forwarded-for", b"x-real-ip", b"Forwarded", b"host", b"x-forwarded-host"])
# text near the grammar finds more parser paths than uniform bytes; both are tried
_near_grammar = st.text(alphabet='0123456789abcdefABCDEF.:[]"\\;,= \t_-forFORunknwy%', max_size=80).map(
    lambda text: text.encode("latin-1")
)
_values = st.one_of(st.binary(max_size=200), _near_grammar)
_headers = st.lists(st.tuples(_names, _values), max_size=6)
_peers = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["testclient", "/run/keel.sock", "", "::ffff:192.0.2.1"]),
    st.none(),
)


@given(peer=_peers, headers=_headers)
def test_an_untrusted_peer_can_never_pick_its_key(peer: str | None, headers: Headers) -> None:
    if NOBODY.client_ip(peer, []).startswith("10."):
        return  # a trusted peer (after IPv4-mapped normalization), covered below
    for resolve in (NOBODY, TRUSTING, FORWARDED, REAL_IP):
        assert resolve.rate_key(peer, headers) == NOBODY.rate_key(peer, [])
        assert resolve.client_ip(peer, headers) == NOBODY.client_ip(peer, [])


@given(
    peer=st.sampled_from([PROXY, "fd00::1", f"::ffff:{PROXY}"]),
    headers=_headers,
    trusted=st.sampled_from([("10.0.0.0/8", "fd00::/8"), ("0.0.0.0/0", "::/0")]),
    header=st.sampled_from(["X-Forwarded-For", "Forwarded", "X-Real-IP"]),
)
def test_a_trusted_peer_gives_an_address_or_itself(
    peer: str, headers: Headers, trusted: tuple[str, ...], header: str
) -> None:
    resolve = resolver(*trusted, header=header)
    client = resolve.client_ip(peer, headers)
    if client != str(ip_address(peer)).removeprefix("::ffff:"):
        ip_address(client)  # raises if it is not an address
    key = resolve.rate_key(peer, headers)
    assert key.startswith("ip:")


@given(peer=st.sampled_from([PROXY, "fd00::1"]), headers=_headers, header=st.sampled_from(sorted(PROXY_HEADERS)))
def test_headers_other_than_the_configured_one_never_change_the_key(peer: str, headers: Headers, header: str) -> None:
    resolve = resolver("10.0.0.0/8", "fd00::/8", header=header)
    own = PROXY_HEADERS[header]
    assert resolve.rate_key(peer, headers) == resolve.rate_key(peer, [(n, v) for n, v in headers if n == own])
