"""Sources: reading order of rotated sets, compression, bounded chunks."""
import bz2
import gzip
import io
import lzma

import pytest

from logban.sources import chunks, expand, open_source


def test_rotated_sets_are_read_oldest_first(tmp_path):
    names = ["mail.log", "mail.log.1", "mail.log.2.gz", "mail.log.10.xz", "maillog-20261120.bz2",
             "maillog-20261119", "maillog", "notes.md", ".hidden", "expected.json"]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    got = [s.path.name for s in expand([str(tmp_path)])]
    assert got == ["mail.log.10.xz", "mail.log.2.gz", "mail.log.1", "mail.log",
                   "maillog-20261119", "maillog-20261120.bz2", "maillog"]


def test_postfix_logrotate_names_are_read_oldest_first(tmp_path):
    """Postfix's own maillog_file, as `postfix logrotate` renames (and compresses) it."""
    names = ["postfix.log", "postfix.log.20261120-235959.gz", "postfix.log.20261121-000100", "postfix.log.20261119-120000.xz"]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    assert [s.path.name for s in expand([str(tmp_path)])] == [
        "postfix.log.20261119-120000.xz", "postfix.log.20261120-235959.gz", "postfix.log.20261121-000100", "postfix.log"]


def test_stdin_and_missing_paths(tmp_path):
    assert [s.name for s in expand(["-"])] == ["-"]
    # A missing file is an input that cannot be read, reported when it is read (exit 1), not a usage error.
    [src] = expand([str(tmp_path / "nope.log")])
    with pytest.raises(FileNotFoundError):
        open_source(src)


@pytest.mark.parametrize("compress, name", [
    (gzip.compress, "a.gz"), (bz2.compress, "a.bz2"), (lzma.compress, "a.xz"), (lambda b: b, "a"),
    (gzip.compress, "misnamed.log"),
])
def test_compression_is_recognised_by_content(tmp_path, compress, name):
    data = b"line one\nline two\n" * 1000
    (tmp_path / name).write_bytes(compress(data))
    [src] = expand([str(tmp_path / name)])
    with open_source(src) as f:
        assert b"".join(chunks(f, 8192, size=4096)) == data


def test_chunks_hold_whole_lines_and_cut_long_ones():
    data = b"a\n" + b"x" * 50_000 + b"\nb\nc"
    got = list(chunks(io.BytesIO(data), max_line=1000, size=777))
    joined = b"".join(got)
    assert joined == b"a\n" + b"x" * 1000 + b"\nb\nc"
    assert all(c.endswith(b"\n") for c in got[:-1])


def test_a_line_split_across_reads_is_whole():
    data = b"first line\nsecond line\n"
    got = list(chunks(io.BytesIO(data), max_line=100, size=5))
    assert b"".join(got) == data and all(c.endswith(b"\n") for c in got)
