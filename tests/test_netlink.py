"""The netlink reader of nftables set elements, on messages built here as the kernel
builds them (the kernel itself: test_firewall.py)."""
import struct

from hypothesis import given
from hypothesis import strategies as st

from logban.firewall.netlink import (
    DATA_VALUE,
    ELEM_EXPIRATION,
    ELEM_KEY,
    ELEM_TIMEOUT,
    LIST_ELEMENTS,
    LIST_SET,
    LIST_TABLE,
    _attr,
    _elements,
)

ELEM_FLAGS = 3


def element(key: bytes, left_ms: int | None, flags: bool = False) -> bytes:
    """One NFTA_LIST_ELEM: key, then (with a time left) the timeout and the expiration."""
    body = _attr(ELEM_KEY, _attr(DATA_VALUE, key))
    if flags:
        body += _attr(ELEM_FLAGS, struct.pack(">I", 0))
    if left_ms is not None:
        body += _attr(ELEM_TIMEOUT, struct.pack(">Q", 3_600_000)) + _attr(ELEM_EXPIRATION, struct.pack(">Q", left_ms))
    return _attr(1, body)


def message(elements: list[bytes]) -> bytes:
    return _attr(LIST_TABLE, b"logban\0") + _attr(LIST_SET, b"ban6_64\0") + _attr(LIST_ELEMENTS, b"".join(elements))


def read(buf: bytes) -> dict:
    out: dict = {}
    _elements(buf, 0, len(buf), out)
    return out


def test_usual_elements_read_in_one_pass_and_the_rest_one_by_one():
    v6 = [bytes([0x20, 1, 0xd, 0xb8]) + i.to_bytes(12, "big") for i in range(50)]
    assert read(message([element(k, 90_500) for k in v6])) == dict.fromkeys(v6, 90)
    v4 = [bytes([192, 0, 2, i]) for i in range(50)]
    assert read(message([element(k, 5_999) for k in v4])) == dict.fromkeys(v4, 5)
    # One permanent element, or one with an attribute more, among them: all still read right.
    mixed = [element(k, 90_500) for k in v6[:-1]] + [element(v6[-1], None)]
    assert read(message(mixed)) == dict.fromkeys(v6[:-1], 90) | {v6[-1]: None}
    assert read(message([element(v6[0], 1_000, flags=True), element(v6[1], 2_000)])) == {v6[0]: 1, v6[1]: 2}


# Keys made of the very bytes of an element's header: a match starting inside a key must not
# be taken for an element.
_HEADERISH = st.sampled_from([element(b"\0" * 16, 1)[:16], b"\x34\x00\x01\x00" * 4, b"\x0c\x00\x05\x00" * 4])


@given(st.lists(st.tuples(st.binary(min_size=16, max_size=16) | _HEADERISH, st.none() | st.integers(0, 2**40)),
                max_size=30, unique_by=lambda e: e[0]))
def test_elements_read_whatever_their_layout(elements):
    got = read(message([element(k, left) for k, left in elements]))
    assert got == {k: None if left is None else left // 1000 for k, left in elements}
