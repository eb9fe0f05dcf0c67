"""The `logban[fast]` extra (logban/fast.py): the Hyperscan pre-filter gives what the
pure-Python one gives, hint for hint and line for line, so every pack yields the same
offences one by one, the same counters, both ways."""
import bz2
import calendar
import dataclasses
import gzip
import io
import lzma
import random
import sys
from datetime import datetime

import pytest
from conftest import ROOT, SAMPLES, skip_or_fail

from logban import fast
from logban.parse import Clock, Parser
from logban.rules import load_rules
from logban.sources import chunks

sys.path.insert(0, str(ROOT / "bench"))
import genlog  # noqa: E402  (bench/genlog.py: the benchmark's generated Postfix log)

OWN = ("mx.example.com", "192.0.2.25")
ALL = load_rules(own_names=OWN)
REF = calendar.timegm((2026, 11, 1, 0, 0, 0))
MAX_LINE = 2048


@pytest.fixture(autouse=True)
def need_hyperscan():
    if not fast.available():
        skip_or_fail("hyperscan is not installed (pip install -e '.[test]' brings it)")


def _samples() -> list[bytes]:
    """Every sample log, decompressed."""
    out = []
    for p in sorted((SAMPLES / "logs").rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            for suffix, unpack in ((".gz", gzip.decompress), (".bz2", bz2.decompress), (".xz", lzma.decompress)):
                if p.suffix == suffix:
                    data = unpack(data)
            out.append(data)
    return out


def _rule_lines() -> list[bytes]:
    """The sample line of every rule test of every pack: each rule's own shape."""
    return [t.line.encode() + b"\n" for r in ALL.rules for t in r.tests]


# Lines that test the pre-filter's edges: a lead inside a lead, hints beyond max_line, bytes
# that are no text, a hint broken by a newline, RFC 5424 and Solaris heads (leads looked for
# anywhere in their chunk), CR line ends.
HOSTILE = [
    b"Dec  1 09:42:28 mx1 postfix/smtpd[1]: warning: reject: RCPT from unknown[203.0.113.9]: 554 5.7.1 "
    b"Service unavailable; Client host [203.0.113.9] blocked using zen.spamhaus.org; from=<a@b> to=<c@d>\n",
    b"Dec  1 09:42:28 mx1 postfix/smtpd[1]: NOQUEUE: reject: warning: reject: lost connection after AUTH from x[198.51.100.7]\n",
    b"Dec  1 09:42:29 mx1 postfix/smtpd[2]: connect from x[192.0.2.9" + b"9" * 20000 + b"]\n",
    b"Dec  1 09:42:29 mx1 postfix/smtpd[2]: " + b"A" * 5000 + b" lost connection after AUTH from unknown[198.51.100.8]\n",
    b"Dec  1 09:42:29 mx1 postfix/smtpd[2]: lost connection after AUTH from unknown[198.51.100.9]" + b" " * 3000 + b"\n",
    b"Dec  1 09:42:30 mx1 postfix/smtpd[3]: \xff\xfe\x00 lost connection after AUTH from unknown[\x00]\n",
    b"Dec  1 09:42:30 mx1 postfix/smtpd[3]: lost connection after AUTH from \xc3\x28[198.51.100.10]\n",
    b"\x00" * 300 + b": reject: : warning: \x00\n",
    b"Dec  1 09:42:31 mx1 postfix/smtpd[4]: lost connection\n after AUTH from unknown[198.51.100.11]\n",
    b"Dec  1 09:42:31 mx1 postfix/smtpd[4]: lost connection after AUTH from unknown[198.51.100.12]\r\n",
    b"<22>1 2026-12-01T09:42:32Z mx1 postfix/smtpd 5 - - lost connection after AUTH from unknown[198.51.100.13]\n",
    b"Dec  1 09:42:33 mx1 sm-mta[6]: [ID 801593 mail.notice] 4AKA0001234567: ruleset=check_rcpt, arg1=<a@b>, "
    b"relay=bot.example.biz [198.51.100.14] (may be forged), reject=550 5.7.1 <a@b>... Relaying denied\n",
    b"\n", b"\r\n", b": ", b"reject: \n",
]


def _generated(seed: int, lines: int = 6000) -> bytes:
    out = io.StringIO()
    genlog.generate(lines, seed, 200, out, start=datetime(2026, 10, 31, 18, 0, 0), span=3600.0, offence_share=0.3)
    return out.getvalue().encode()


def _mixed(seed: int) -> bytes:
    """The generated Postfix log with every rule's sample line, the sample logs' lines and the
    hostile lines shuffled in: every pack gets lines it takes, among lines it must not."""
    rng = random.Random(seed)
    lines = _generated(seed).splitlines(keepends=True)
    extra = _rule_lines() + [l for s in _samples() for l in s.splitlines(keepends=True)] + HOSTILE
    for l in extra * 2:
        lines.insert(rng.randrange(len(lines) + 1), l)
    return b"".join(lines)


def _parse(rules, data: bytes, use_fast: bool, size: int, **kw) -> tuple[list[tuple], dict, list]:
    p = Parser(rules, clock=Clock("UTC", reference=REF), max_line=MAX_LINE, fast=use_fast, **kw)
    assert (p.hyperscan is not None) == use_fast
    offs, hints = [], []
    for chunk in chunks(io.BytesIO(data), MAX_LINE, size):
        hints.append({ls: sorted(ids) for ls, ids in p._hits(chunk).items()})
        offs += [dataclasses.astuple(o) for o in p.feed(chunk, p.stats.lines)]
    p.finish()
    return offs, dataclasses.asdict(p.stats), hints


def _same(rules, data: bytes, size: int = 1 << 20, **kw) -> list[tuple]:
    slow, slow_stats, slow_hints = _parse(rules, data, False, size, **kw)
    quick, quick_stats, quick_hints = _parse(rules, data, True, size, **kw)
    assert slow_hints == quick_hints
    for i, (a, b) in enumerate(zip(slow, quick)):
        assert a == b, f"offence {i} differs"
    assert len(slow) == len(quick)
    assert slow_stats == quick_stats
    return slow


@pytest.mark.parametrize("pack", [None, *ALL.packs])
def test_every_pack_same_offences_both_ways(pack):
    rules = ALL if pack is None else load_rules(own_names=OWN, only_packs=(pack,))
    data = _mixed(7)
    got = _same(rules, data)
    assert len(got) > (1000 if pack in (None, "postfix") else 20)
    # The pack's own rules matched: the comparison covered them, not just silence.
    assert {o[2] for o in got} == ({r.pack for r in ALL.rules} if pack is None else {pack})


@pytest.mark.parametrize("size", [4096, 65536])
def test_small_chunks_and_forced_packs_same_both_ways(size):
    """Chunks of a few lines (hints at the very start and end of a chunk), and --mta (rules of
    every program)."""
    data = _mixed(11)
    assert len(_same(ALL, data, size)) > 1000
    assert len(_same(ALL, data, size, any_program=True)) > 1000


def test_sample_logs_and_generated_log_each_same_both_ways():
    for data in [*_samples(), _generated(3, 20000)]:
        _same(ALL, data)


def test_hostile_lines_alone_same_both_ways():
    for line in HOSTILE:
        for data in (line, line.rstrip(b"\n"), line * 3):
            _same(ALL, data)
    got = _same(ALL, b"".join(HOSTILE))
    assert {o[1] for o in got} >= {"203.0.113.9", "198.51.100.12", "198.51.100.13", "198.51.100.14"}


@pytest.mark.parametrize("use_fast", [False, True])
def test_a_lead_inside_another_lead_still_brings_its_rules(use_fast):
    """": warning: reject: ": the reject rules' lead begins inside the warning lead; a regex
    that finds leads without overlap lost it, and with it a match the rule makes."""
    p = Parser(ALL, clock=Clock("UTC", reference=REF), fast=use_fast)
    got = p.parse_lines(HOSTILE[0])
    assert [(o.rule, o.ip) for o in got] == [("postfix-dnsbl", "203.0.113.9")]


def test_logban_fast_0_switches_hyperscan_off(monkeypatch):
    monkeypatch.delenv(fast.ENV, raising=False)
    assert fast.wanted() and Parser(ALL).hyperscan is not None
    for off in ("0", "off", "no", "false"):
        monkeypatch.setenv(fast.ENV, off)
        assert not fast.wanted() and Parser(ALL).hyperscan is None
        assert Parser(ALL, fast=True).hyperscan is not None        # an explicit choice wins


def test_cli_same_events_and_report_with_and_without_fast(tmp_path, logban):
    """The real process, in one process and on two cores, with Hyperscan and without."""
    log = tmp_path / "mail.log"
    data = _mixed(5)
    log.write_bytes(data * (3_000_000 // len(data) + 1))          # over two parts of 1 MiB
    outs = {}
    for jobs in ("1", "2"):
        for flag in ("0", "1"):
            ev = logban("scan", "--events", "--jobs", jobs, str(log), env={fast.ENV: flag})
            assert ev.returncode == 0, ev.stderr
            outs[jobs, flag] = ev.stdout
    assert outs["1", "0"].count(b"\n") > 1000
    assert len(set(outs.values())) == 1



def _pack(tmp_path, hint: str, match: str):
    (tmp_path / "mine.toml").write_text(
        '[pack]\nname = "mine"\nprograms = ["mine"]\n\n[[rule]]\nid = "mine-bad"\nkind = "bad_helo"\nscore = 1\n'
        f"match = '{match}'\nhint = \"{hint}\"\n", encoding="utf-8")
    return load_rules([tmp_path], shipped=False)


@pytest.mark.parametrize("hint, want", [("bad\\u0000x", ["198.51.100.20"]), ("bad\\nx", [])])
def test_hints_hyperscan_cannot_take_leave_the_python_pre_filter(tmp_path, hint, want):
    """A NUL (the binding reads patterns as C strings) or a newline in a hint: Python finds it."""
    rules = _pack(tmp_path, hint, r"bad.x from \[{{IP}}\]")
    p = Parser(rules, clock=Clock("UTC", reference=REF), fast=True)
    assert p.hyperscan is None
    line = hint.replace("\\u0000", "\0").replace("\\n", "\n").encode()
    got = p.parse_lines(b"Dec  1 09:42:28 mx1 mine[1]: " + line + b" from [198.51.100.20]\n")
    assert [o.ip for o in got] == want


def test_non_ascii_hint_same_both_ways(tmp_path):
    rules = _pack(tmp_path, "böse", r"böse from \[{{IP}}\]")
    assert Parser(rules, fast=True).hyperscan is not None
    data = "Dec  1 09:42:28 mx1 mine[1]: böse from [198.51.100.21]\n".encode() + b"x b\xf6se \xff\n" + HOSTILE[5]
    assert [o[1] for o in _same(rules, data)] == ["198.51.100.21"]


class _CountingRfind(bytes):
    """A chunk that counts the pre-filter's looks back for the start of a line."""
    calls = 0

    def rfind(self, *a):
        type(self).calls += 1
        return bytes.rfind(self, *a)


@pytest.mark.parametrize("use_fast", [False, True])
@pytest.mark.parametrize("hint", [b"_AUTH", b": reject: "])
def test_a_line_full_of_hints_is_looked_back_on_once(use_fast, hint):
    """A line start was found by rfind once per hint occurrence, scanning back over the
    line each time: a 1 MiB line of one hint took a second (quadratic) where a usual MiB
    takes milliseconds. Once per line now, both ways, and the same hits as before."""
    p = Parser(ALL, clock=Clock("UTC", reference=REF), fast=use_fast)
    line = b"Dec  1 09:42:28 mx1 postfix/smtpd[1]: x " + hint * 20_000 + b"\n"
    chunk = _CountingRfind(line * 3)
    _CountingRfind.calls = 0
    got = p._hits(chunk)
    assert sorted(got) == [0, len(line), 2 * len(line)]
    assert _CountingRfind.calls < 100
    assert {ls: sorted(ids) for ls, ids in got.items()} == {ls: sorted(ids) for ls, ids in p._hits(line * 3).items()}
