"""The follower in-process: identities, positions, rotated copies, partial and endless lines."""
from __future__ import annotations

import gzip
from types import SimpleNamespace

import pytest

from logban import follow
from logban.follow import Follower, Spec


def pos_of(d: dict) -> SimpleNamespace:
    return SimpleNamespace(**d)


def saved(f: Follower) -> dict:
    return {p["path"]: pos_of(p) for p in f.positions()}


def lines_of(chunks) -> list[bytes]:
    return [ln for c in chunks for ln in c.data.splitlines()]


def test_new_file_is_followed_from_its_end_unless_from_start(tmp_path):
    log = tmp_path / "mail.log"
    log.write_bytes(b"old 1\nold 2\n")
    f = Follower([Spec(log)], {}, poll=True)
    assert f.read() == []
    with open(log, "ab") as w:
        w.write(b"new 3\n")
    got = f.read()
    assert lines_of(got) == [b"new 3"] and got[0].lines_before == 2
    f.close()
    f = Follower([Spec(log)], {}, poll=True, from_start=True)
    assert lines_of(f.read()) == [b"old 1", b"old 2", b"new 3"]
    f.close()


def test_a_reused_inode_with_other_content_is_a_new_file(tmp_path):
    log = tmp_path / "mail.log"
    log.write_bytes(b"\n" + b"a" * 2000 + b"\n")
    f = Follower([Spec(log)], {}, poll=True, from_start=True)
    f.read()
    pos = saved(f)
    f.close()
    log.write_bytes(b"\n" + b"b" * 2500 + b"\n")          # same inode, same blank first line, other file
    f = Follower([Spec(log)], pos, poll=True)
    assert lines_of(f.read()) == [b"", b"b" * 2500]
    f.close()


@pytest.mark.parametrize("compress", [False, True])
def test_a_crash_while_finishing_a_rotated_copy_neither_repeats_nor_skips(tmp_path, monkeypatch, compress):
    monkeypatch.setattr(follow, "READ_MAX", 64)
    log = tmp_path / "mail.log"
    log.write_bytes(b"line 0\n")
    f = Follower([Spec(log)], {}, poll=True, from_start=True)
    assert lines_of(f.read()) == [b"line 0"]
    pos = saved(f)
    f.close()
    with open(log, "ab") as w:                              # written while logban is down ...
        w.write(b"".join(b"line %d\n" % i for i in range(1, 40)))
    rotated = tmp_path / "mail.log.1"
    log.rename(rotated)                                     # ... then rotated
    if compress:
        rotated.with_suffix(".1.gz").write_bytes(gzip.compress(rotated.read_bytes()))
        rotated.unlink()
        rotated = rotated.with_suffix(".1.gz")
    log.write_bytes(b"fresh 1\n")
    f = Follower([Spec(log)], pos, poll=True)
    first = f.read()                                        # one round of the copy, then a "crash"
    assert first[0].name == str(rotated)
    pos = saved(f)
    f.close()
    f = Follower([Spec(log)], pos, poll=True)
    rest = []
    for _ in range(100):
        got = f.read()
        if not got and rest and rest[-1].name == str(log):
            break
        rest += got
    f.close()
    assert lines_of(first + rest) == [b"line %d" % i for i in range(1, 40)] + [b"fresh 1"]
    assert [c.lines_before for c in first + rest][0] == 1


def test_partial_and_endless_lines(tmp_path, monkeypatch):
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    f = Follower([Spec(log)], {}, poll=True, max_line=100)
    with open(log, "ab") as w:
        w.write(b"half")
        w.flush()
        assert f.read() == []
        w.write(b" done\n" + b"x" * 5000)
        w.flush()
        got = lines_of(f.read())
        assert got[0] == b"half done" and got[1] == b"x" * 100
        w.write(b"y" * 300 + b"\nnext\n")
    assert lines_of(f.read()) == [b"next"]                  # the rest of the endless line is dropped
    f.close()


def test_a_restart_with_no_new_lines_reads_nothing_again(tmp_path):
    log = tmp_path / "mail.log"
    log.write_bytes(b"one\ntwo\n")
    f = Follower([Spec(log)], {}, poll=True, from_start=True)
    assert lines_of(f.read()) == [b"one", b"two"]
    pos = saved(f)
    f.close()
    f = Follower([Spec(log)], pos, poll=True)
    assert f.read() == []
    with open(log, "ab") as w:
        w.write(b"three\n")
    got = f.read()
    assert lines_of(got) == [b"three"] and got[0].lines_before == 2
    f.close()


def test_lines_a_late_writer_adds_to_the_rotated_file_are_read(tmp_path):
    log = tmp_path / "mail.log"
    log.write_bytes(b"one\n")
    f = Follower([Spec(log)], {}, poll=True, from_start=True)
    assert lines_of(f.read()) == [b"one"]
    with open(log, "ab") as late:                 # the MTA still holds the file it opened
        log.rename(tmp_path / "mail.log.1")
        log.write_bytes(b"new file\n")
        assert sorted(lines_of(f.read())) == [b"new file"]
        assert f.read() == []                     # a quiet moment: the old file is still watched
        late.write(b"late\n")
        late.flush()
        assert lines_of(f.read()) == [b"late"]
    f.close()
