import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def run_logban(*args: str, stdin: bytes | None = None, timeout: float = 120, env: dict | None = None,
               prefix: list[str] = ()) -> subprocess.CompletedProcess:
    """The real `logban` process, as a user runs it; `prefix`: a command it runs under
    (`as_nobody(...)`, `ip netns exec NS`); `env`: added to the environment."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    if "--backend" not in args:
        args = ("--backend", "none", *args)     # as root, auto would be the root namespace's firewall
    return subprocess.run([*prefix, sys.executable, "-m", "logban", *args], input=stdin, capture_output=True,
                          timeout=timeout, env=env, cwd=ROOT)


def _unsearchable() -> dict[Path, set[str]]:
    """Directories on the way to this interpreter and the checkout that other users cannot
    enter (pyenv under /root), each with the names below it that the way goes through."""
    out: dict[Path, set[str]] = {}
    for p in {Path(sys.executable), Path(os.path.realpath(sys.executable)), Path(sys.prefix),
              Path(sys.base_prefix), ROOT}:
        for child, d in zip([p, *p.parents], p.parents):
            if not d.stat().st_mode & 0o001:
                out.setdefault(d, set()).add(child.name)
    return out


def as_nobody(hold: Path, setup: str = "") -> list[str]:
    """A command prefix: what follows runs as the unprivileged user nobody, in a mount
    namespace of its own (nothing leaks to the host) where `setup` ran first as root (a
    read-only bind mount, say). Directories that hide this interpreter from other users are
    replaced there by a tmpfs holding only the way through, so nobody needs no capability."""
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "setpriv")):
        skip_or_fail("needs root, unshare and setpriv to run logban as nobody")
    lines = ["set -e", setup]
    for i, (d, names) in enumerate(sorted(_unsearchable().items())):
        keep = hold / f"hold{i}"
        keep.mkdir(parents=True, exist_ok=True)
        lines += [f"mount --bind {shlex.quote(str(d))} {shlex.quote(str(keep))}",
                  f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(str(d))}"]
        for n in names:
            src, dst = shlex.quote(str(keep / n)), shlex.quote(str(d / n))
            lines += [f"if [ -d {src} ]; then mkdir -p {dst}; else touch {dst}; fi", f"mount --bind {src} {dst}"]
    lines.append('exec setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME=/nonexistent "$@"')
    return ["unshare", "-m", "sh", "-c", "\n".join(lines), "sh"]


@pytest.fixture
def public_tmp():
    """A temporary directory other users can enter (pytest's own are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="logban-test-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def bsd_stamp(t: float, utc: bool = False) -> str:
    """An RFC 3164 header stamp ("Dec  2 10:00:00") for epoch `t`, local time or UTC."""
    return time.strftime("%b %e %H:%M:%S", time.gmtime(t) if utc else time.localtime(t))


def touch_now(*paths) -> None:
    """Set the files' mtime to this process's clock. `scan` infers the year RFC 3164 stamps
    leave out from a file's mtime; under a shifted clock (libfaketime) the kernel still
    stamps written files with the real time, which would put "recent" lines in another year."""
    now = time.time()
    for p in paths:
        os.utime(p, (now, now))


def skip_or_fail(why: str) -> None:
    """A test that cannot run here is skipped with the reason; under CI=true it fails: CI must run it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}, and CI=true: this test must run in CI")
    pytest.skip(why)


@pytest.fixture
def logban():
    return run_logban


def _root_firewall() -> str:
    """What of logban's could be in the root namespace's firewall."""
    out = []
    for cmd in (["nft", "list", "tables"], ["ipset", "list", "-n"], ["iptables-legacy", "-S"], ["iptables", "-S"]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        out += [f"{cmd[0]}: {ln}" for ln in r.stdout.splitlines() if "logban" in ln]
    return "\n".join(out)


@pytest.fixture(scope="session", autouse=True)
def root_namespace_untouched():
    """The tests change firewalls only in namespaces they made: checked, not hoped."""
    before = _root_firewall() if os.geteuid() == 0 else ""
    yield
    if os.geteuid() == 0:
        after = _root_firewall()
        assert after == before, f"the root namespace's firewall changed:\n{after}"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """One real PostgreSQL server for the session (each test gets a database of its own)."""
    from pgserver import PgServer
    server = PgServer(tmp_path_factory.mktemp("pg") / "server")
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server):
    import uuid

    import psycopg
    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return pg_server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """The store's URL: a SQLite file, then a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/logban.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def daemons():
    """`logban run` processes (tests/daemonproc.Daemon) a test started: killed if still running."""
    running: list = []
    yield running
    for d in running:
        d.close()


# A pack whose first rule backtracks without end on "evil: aaaa...": what the per-match time
# limit must stop (test_parse, test_timelimit).
EVIL_PACK = '''
[pack]
name = "evil"
programs = ["evild"]
[[rule]]
id = "evil-backtracking"
kind = "protocol_abuse"
score = 1
match = 'evil: (?:a|a)*(?:a|a)*b {{IP}}'
[[rule]]
id = "evil-plain"
kind = "protocol_abuse"
score = 1
match = 'plain from {{IP}}'
'''


# A user's pack whose address or key group can take no part in a match (optional, or in
# another branch of an alternation): `rules check` finds nothing wrong with it (test_parse,
# test_rules).
OPTIONAL_GROUPS_PACK = '''
[pack]
name = "opt"
programs = ["optd"]
[[rule]]
id = "opt-address"
kind = "protocol_abuse"
score = 1
match = 'refused(?: client (?P<ip>[0-9.]{7,15}))? done'
[[rule]]
id = "opt-key"
kind = "unknown_user"
score = 1
match = 'queue(?: (?P<key>[0-9A-F]{5,20}))? user unknown'
[[link]]
id = "opt-link"
match = 'client(?: (?P<key>[0-9A-F]{5,20}))? is (?P<ip>[0-9.]{7,15})'
'''


def _pack_rules(tmp: Path, name: str, text: str):
    from logban.rules import load_rules
    d = tmp / "packs"
    d.mkdir()
    (d / f"{name}.toml").write_text(text)
    return load_rules([d])


def evil_rules(tmp: Path):
    """The rules of EVIL_PACK, loaded from a pack directory under `tmp`."""
    return _pack_rules(tmp, "evil", EVIL_PACK)


def optional_group_rules(tmp: Path):
    """The rules of OPTIONAL_GROUPS_PACK, loaded from a pack directory under `tmp`."""
    return _pack_rules(tmp, "opt", OPTIONAL_GROUPS_PACK)
