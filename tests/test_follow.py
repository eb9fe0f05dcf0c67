"""The follower in-process: identities, positions, rotated copies, partial and endless lines."""
from __future__ import annotations

import gzip
import os
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


def numbered(chunks) -> list[tuple[int, bytes]]:
    """(line number, line) as the offences get them: lines_before + the line's place in its chunk."""
    return [(c.lines_before + i, ln) for c in chunks for i, ln in enumerate(c.data.splitlines(), 1)]


def test_a_file_met_first_is_skipped_to_its_last_whole_line_with_true_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(follow, "READ_MAX", 64)             # many rounds of counting
    log = tmp_path / "mail.log"
    log.write_bytes(b"".join(b"old %d\n" % i for i in range(1, 101)) + b"half")
    f = Follower([Spec(log)], {}, poll=True)
    assert f.read() == []
    [p] = f.positions()
    assert (p["lines"], p["offset"]) == (100, log.stat().st_size - 4)
    with open(log, "ab") as w:
        w.write(b" and rest\nnew 102\n")
    assert numbered(f.read()) == [(101, b"half and rest"), (102, b"new 102")]
    f.close()


@pytest.mark.parametrize("compress", [False, True])
def test_a_rotated_copy_read_in_rounds_numbers_every_line_and_ends_with_an_unfinished_one(tmp_path, monkeypatch,
                                                                                          compress):
    monkeypatch.setattr(follow, "READ_MAX", 16)
    log = tmp_path / "mail.log"
    log.write_bytes(b"line 1\n")
    f = Follower([Spec(log)], {}, poll=True, from_start=True)
    assert numbered(f.read()) == [(1, b"line 1")]
    pos = saved(f)
    f.close()
    with open(log, "ab") as w:                              # written while logban is down, the last line cut
        w.write(b"".join(b"line %d\n" % i for i in range(2, 30)) + b"line 30")
    rotated = tmp_path / "mail.log.1"
    log.rename(rotated)
    if compress:
        rotated.with_suffix(".1.gz").write_bytes(gzip.compress(rotated.read_bytes()))
        rotated.unlink()
    log.write_bytes(b"fresh 1\n")
    got, positions = [], []
    f = Follower([Spec(log)], pos, poll=True)
    for _ in range(200):                                     # a restart after every round that gave lines
        chunks = f.read()
        got += chunks
        if chunks and chunks[-1].name == str(log):
            break
        if chunks:
            pos = saved(f)
            positions.append(f.positions()[0])
            f.close()
            f = Follower([Spec(log)], pos, poll=True)
    f.close()
    assert numbered(got) == [(i, b"line %d" % i) for i in range(2, 31)] + [(1, b"fresh 1")]
    if not compress:                                         # offsets into the copy, at every round
        data = rotated.read_bytes()
        for p in positions[:-1]:
            assert data[:p["offset"]].count(b"\n") == p["lines"] or p["offset"] == len(data)


def test_rotated_copies_newest_first(tmp_path):
    log = tmp_path / "mail.log"
    names = ["mail.log-20261120", "mail.log.1", "mail.log.0.gz", "mail.log.2", "other.log.1"]
    for age, n in enumerate(names):
        (tmp_path / n).write_bytes(b"x\n")
        os.utime(tmp_path / n, (1_800_000_000 - age * 100, 1_800_000_000 - age * 100))
    assert [p.name for p in follow.rotated_copies(log)] == ["mail.log-20261120", "mail.log.1", "mail.log.0.gz"]
    # Postfix's own maillog_file after `postfix logrotate` (maillog_file_rotate_suffix, compressed or not).
    log = tmp_path / "postfix.log"
    for age, n in enumerate(["postfix.log.20261121-063632.gz", "postfix.log.20261120-063632", "postfix.log.old"]):
        (tmp_path / n).write_bytes(b"x\n")
        os.utime(tmp_path / n, (1_800_000_000 - age * 100, 1_800_000_000 - age * 100))
    assert [p.name for p in follow.rotated_copies(log)] == ["postfix.log.20261121-063632.gz", "postfix.log.20261120-063632"]


def test_truncation_appearance_and_a_rotation_to_a_file_with_a_half_line(tmp_path):
    log = tmp_path / "mail.log"
    f = Follower([Spec(log, "sendmail")], {}, poll=True)
    assert f.read() == []                                   # not there yet
    log.write_bytes(b"one\ntwo\n")
    got = f.read()                                          # appeared: read from its start
    assert [(c.path, c.name, c.mta) for c in got] == [(str(log), str(log), "sendmail")]
    assert numbered(got) == [(1, b"one"), (2, b"two")]
    with open(log, "r+b") as w:                             # copytruncate, then a new line
        w.truncate(0)
    log.write_bytes(b"x\n")
    assert numbered(f.read()) == [(1, b"x")]
    log.rename(tmp_path / "mail.log.1")
    log.write_bytes(b"new 1\nnew 2 half")                   # the new file's last line is not whole yet
    got = f.read()
    assert numbered(got) == [(1, b"new 1")] and got[-1].name == str(log)
    with open(log, "ab") as w:
        w.write(b" done\n")
    assert numbered(f.read()) == [(2, b"new 2 half done")]
    f.close()


def test_lines_around_endless_lines_keep_their_offsets_and_numbers(tmp_path):
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    f = Follower([Spec(log)], {}, poll=True, max_line=100)

    def add(data: bytes) -> list[tuple[int, bytes]]:
        with open(log, "ab") as w:
            w.write(data)
        return numbered(f.read())

    assert add(b"x" * 100) == [(1, b"x" * 100)]          # exactly max_line and no newline yet: cut now
    assert add(b"\nnext\n") == [(2, b"next")]             # the cut line's end is the first byte read
    assert add(b"y" * 250) == [(3, b"y" * 100)]
    assert add(b"y" * 50) == []                          # still the endless line: dropped
    assert add(b"z\nafter 1\n") == [(4, b"after 1")]
    assert add(b"after 2\n") == [(5, b"after 2")]        # each read goes on exactly where the last ended
    assert add(b"after 3\nafter 4\n") == [(6, b"after 3"), (7, b"after 4")]
    f.close()


def test_a_rotated_file_is_read_until_quiet_then_finished_with_its_half_line(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(follow, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    def at(t: float) -> list[tuple[int, bytes]]:
        clock[0] = t
        got = f.read()
        assert all((c.path, c.name) == (str(log), str(log)) for c in got)
        return numbered(got)

    log = tmp_path / "mail.log"
    log.write_bytes(b"one\n")
    f = Follower([Spec(log)], {}, poll=True, from_start=True)
    assert at(0) == [(1, b"one")]
    with open(log, "ab") as late:                         # the MTA still holds the file it opened
        late.write(b"two half")
        late.flush()
        log.rename(tmp_path / "mail.log.1")
        log.write_bytes(b"new 1\n")
        assert at(0) == [(1, b"new 1")]                   # the old file's half line is not handed out yet
        late.write(b" done\n")
        late.flush()
        assert at(3) == [(2, b"two half done")]           # quiet time restarts at 3
        assert at(3 + follow.DRAIN_IDLE - 1) == []        # quiet, not yet long enough
        late.write(b"three\n")
        late.flush()
        assert at(3 + follow.DRAIN_IDLE - 0.5) == [(3, b"three")]
        late.write(b"four half")
        late.flush()
        assert at(100) == [(4, b"four half")]             # quiet long enough: its last line as it is
        late.write(b"five\n")
        late.flush()
        assert at(200) == []                              # let go
    f.close()


def test_positions_of_every_file_past_a_missing_one_and_a_rotated_copy(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(b"a 1\n")
    b.write_bytes(b"b 1\n")
    f = Follower([Spec(a)], {}, poll=True, from_start=True)
    f.read()
    pos = saved(f)
    f.close()
    with open(a, "ab") as w:
        w.write(b"a 2\n")
    a.rename(tmp_path / "a.log.1")                           # rotated while logban was down: a backlog
    a.write_bytes(b"a new\n")
    f = Follower([Spec(a), Spec(tmp_path / "none.log"), Spec(b)], pos, poll=True)
    assert [p["path"] for p in f.positions()] == [str(a), str(b)]
    f.close()


def test_a_file_met_first_whose_last_newline_starts_a_round_is_skipped_to_it(tmp_path, monkeypatch):
    monkeypatch.setattr(follow, "READ_MAX", 64)
    log = tmp_path / "mail.log"
    log.write_bytes(b"a" * 64 + b"\nhalf")
    f = Follower([Spec(log)], {}, poll=True)
    [p] = f.positions()
    assert (p["lines"], p["offset"]) == (1, 65)
    with open(log, "ab") as w:
        w.write(b" rest\n")
    assert numbered(f.read()) == [(2, b"half rest")]
    f.close()


@pytest.mark.parametrize("mine", [b"", b"mine 1\n"])
def test_a_position_finds_only_its_own_rotated_copy(tmp_path, mine):
    log = tmp_path / "mail.log"
    log.write_bytes(mine)
    f = Follower([Spec(log)], {}, poll=True, from_start=True)
    f.read()
    pos = saved(f)
    f.close()
    (tmp_path / "mail.log.1").write_bytes(b"other 1\nother 2\n")     # not ours: ours went elsewhere
    log.rename(tmp_path / "kept")                          # (kept: the new file cannot reuse its inode)
    log.write_bytes(b"fresh 1\n")
    f = Follower([Spec(log)], pos, poll=True)
    assert numbered(f.read()) == [(1, b"fresh 1")]
    f.close()


def test_an_empty_file_rotated_while_down_is_found_by_its_inode(tmp_path):
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    f = Follower([Spec(log)], {}, poll=True, from_start=True)
    assert f.read() == []
    pos = saved(f)
    assert pos[str(log)].fp_len == 0
    f.close()
    with open(log, "ab") as w:
        w.write(b"a 1\na 2\n")
    log.rename(tmp_path / "mail.log.1")
    log.write_bytes(b"fresh 1\n")
    f = Follower([Spec(log)], pos, poll=True)
    got = f.read() + f.read() + f.read()                   # the copy, its end, the live file
    assert numbered(got) == [(1, b"a 1"), (2, b"a 2"), (1, b"fresh 1")]
    f.close()


def test_a_broken_compressed_copy_is_left_for_the_live_file(tmp_path, monkeypatch):
    monkeypatch.setattr(follow, "READ_MAX", 64)
    log = tmp_path / "mail.log"
    log.write_bytes(b"line 0\n")
    f = Follower([Spec(log, "sendmail")], {}, poll=True, from_start=True)
    f.read()
    pos = saved(f)
    f.close()
    with open(log, "ab") as w:
        w.write(b"".join(b"line %d\n" % i for i in range(1, 400)))
    copy = tmp_path / "mail.log.1.gz"
    z = gzip.compress(log.read_bytes())
    copy.write_bytes(z[: len(z) - 40])                      # cut short: reading it ends in an error
    log.unlink()
    log.write_bytes(b"fresh 1\n")
    logged = []
    f = Follower([Spec(log, "sendmail")], pos, poll=True, log=logged.append)
    got = []
    for _ in range(200):
        got += f.read()
        if got and got[-1].name == str(log):
            break
    f.close()
    assert got[-1].data == b"fresh 1\n"
    old = got[:-1]
    assert old and {(c.path, c.name, c.mta) for c in old} == {(str(log), str(copy), "sendmail")}
    lines = numbered(old)                                   # as far as the copy could be read, in order
    assert lines and lines == [(i + 1, b"line %d" % i) for i in range(1, len(lines) + 1)]
    assert any("going on with" in m for m in logged)


def test_a_deleted_file_is_waited_for(tmp_path):
    log = tmp_path / "mail.log"
    log.write_bytes(b"one\n")
    f = Follower([Spec(log)], {}, poll=True, from_start=True)
    assert numbered(f.read()) == [(1, b"one")]
    log.unlink()
    assert f.read() == [] and f.read() == []
    log.write_bytes(b"new 1\n")
    assert numbered(f.read()) == [(1, b"new 1")]
    f.close()
    Follower([Spec(tmp_path / "none.log")], {}, poll=True).close()     # nothing open: nothing to close
