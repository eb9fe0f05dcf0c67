"""An nftables set's elements read from the kernel over netlink, for the nftables backend.

`nft -j list set` turns every element into an expression and then JSON: seconds at
100,000 elements, the most of a `firewall sync` with nothing to do. A hash set of
addresses needs none of that: one dump of NFT_MSG_GETSETELEM gives each element's key
and time left, read here in a fraction of that. Only reading: every change still goes
through `nft -f`, in one transaction.
"""
from __future__ import annotations

import errno
import os
import re
import socket
import struct

NETLINK_NETFILTER = 12
NFT_MSG_GETSETELEM = (10 << 8) | 13         # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETSETELEM
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFPROTO = {"inet": 1, "ip": 2, "ip6": 10}
# Attributes: of the element list, of one element, of a data value.
LIST_TABLE, LIST_SET, LIST_ELEMENTS = 1, 2, 3
ELEM_KEY, ELEM_TIMEOUT, ELEM_EXPIRATION = 1, 4, 5
DATA_VALUE = 1
_HDR = struct.Struct("=IHHII")              # nlmsghdr
_ATTR = struct.Struct("=HH")                # nlattr: length, type
_BE64 = struct.Struct(">Q")
ATTEMPTS = 3                                # dumps interrupted by a change to the set are read again


class Absent(Exception):
    """No such table or set."""


def _attr(kind: int, value: bytes) -> bytes:
    return _ATTR.pack(4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def _attrs(buf: bytes, start: int, end: int):
    """(type, start of value, end of value) of each attribute in buf[start:end]."""
    while start + 4 <= end:
        length, kind = _ATTR.unpack_from(buf, start)
        if length < 4:
            break
        yield kind & 0x3FFF, start + 4, start + length
        start += (length + 3) & ~3


def set_elements(family: str, table: str, name: str) -> dict[bytes, int | None]:
    """Element key -> seconds left (None: no timeout) of set `name`. Raises Absent, or
    OSError where netlink cannot be used."""
    req = (struct.pack("=BBH", NFPROTO[family], 0, 0)
           + _attr(LIST_TABLE, table.encode() + b"\0") + _attr(LIST_SET, name.encode() + b"\0"))
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
        s.bind((0, 0))
        for attempt in range(ATTEMPTS):
            seq = os.getpid() + attempt
            s.send(_HDR.pack(_HDR.size + len(req), NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + req)
            got, interrupted = _read_dump(s, seq)
            if not interrupted:
                return got
    return got


def _read_dump(s: socket.socket, seq: int) -> tuple[dict[bytes, int | None], bool]:
    out: dict[bytes, int | None] = {}
    interrupted = False
    while True:
        buf = s.recv(1 << 20)
        pos = 0
        while pos + _HDR.size <= len(buf):
            length, kind, flags, mseq, _ = _HDR.unpack_from(buf, pos)
            if length < _HDR.size:
                raise OSError(errno.EPROTO, "netlink: bad message")
            end, body = pos + length, pos + _HDR.size
            pos = (end + 3) & ~3
            if mseq != seq:
                continue
            if kind == NLMSG_DONE:
                return out, interrupted
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", buf, body)[0]
                if code == 0:
                    continue
                if code == errno.ENOENT:
                    raise Absent
                raise OSError(code, f"netlink: {os.strerror(code)}")
            interrupted |= bool(flags & NLM_F_DUMP_INTR)
            _elements(buf, body + 4, end, out)         # past the nfgenmsg


def _usual(key_len: int) -> tuple[int, re.Pattern[bytes]]:
    """(length, pattern) of one element as the kernel dumps an address with a timeout: its
    key, its timeout (skipped) and the time left, in this order and nothing else. Groups:
    the key, the time left (milliseconds, big-endian)."""
    data = 4 + key_len
    length = 4 + (4 + data) + 12 + 12
    return length, re.compile(
        re.escape(_ATTR.pack(length, 1) + _ATTR.pack(4 + data, ELEM_KEY) + _ATTR.pack(data, DATA_VALUE))
        + b"(.{%d})" % key_len + re.escape(_ATTR.pack(12, ELEM_TIMEOUT)) + b".{8}"
        + re.escape(_ATTR.pack(12, ELEM_EXPIRATION)) + b"(.{8})", re.DOTALL)


USUAL = {length: pattern for length, pattern in map(_usual, (4, 16))}       # IPv4, IPv6 keys


def _elements(buf: bytes, start: int, end: int, out: dict[bytes, int | None]) -> None:
    """The elements of one message into `out`: a dump of 100,000 elements is read on
    every sync. Where every element of the list has the usual layout (`USUAL`), one
    regex pass reads them all; otherwise flat loops, no generator per element."""
    unpack, be64 = _ATTR.unpack_from, _BE64.unpack_from
    for kind, a, b in _attrs(buf, start, end):
        if kind != LIST_ELEMENTS or a + 4 > b:
            continue
        length = unpack(buf, a)[0]
        usual = USUAL.get(length)
        if usual is not None:
            got = usual.findall(buf, a, b)
            # Matches never overlap: as many as fill the list exactly tile it from its
            # first byte, each one starting where an element starts.
            if len(got) * length == b - a:
                frm = int.from_bytes
                for key, left in got:
                    out[key] = frm(left, "big") // 1000
                continue
        e = a
        while e + 4 <= b:                               # each NFTA_LIST_ELEM
            elen = unpack(buf, e)[0]
            if elen < 4:
                break
            p, eend, key, left = e + 4, e + elen, None, None
            while p + 4 <= eend:
                alen, k = unpack(buf, p)
                if alen < 4:
                    break
                k &= 0x3FFF
                if k == ELEM_KEY:                       # nested: its NFTA_DATA_VALUE
                    dlen, dk = unpack(buf, p + 4)
                    if dk & 0x3FFF == DATA_VALUE:
                        key = buf[p + 8:p + 4 + dlen]
                elif k == ELEM_EXPIRATION:
                    left = be64(buf, p + 4)[0] // 1000
                p += (alen + 3) & ~3
            if key is not None:
                out[key] = left
            e += (elen + 3) & ~3
