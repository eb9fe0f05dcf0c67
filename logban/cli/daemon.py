"""`logban run` and `reload`: the daemon."""
from __future__ import annotations

import sys
from pathlib import Path

from ..config import Config
from ..errors import UsageError
from ..report import safe
from .common import _node


def cmd_run(args, cfg: Config) -> int:
    import logging

    from ..daemon import Daemon, Options, SafeFormatter
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter("%(asctime)s logban: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    follow = [p.resolve() if not p.is_absolute() else p for p in args.follow]
    _check_follows(follow, [p for p, _ in cfg.daemon.follow], cfg)
    from ..pidfile import check_dir, default_pid_file
    check_dir((cfg.daemon.pid_file or default_pid_file()).parent, create=True)   # refused before any work
    journals = _journals(args, cfg)
    d = Daemon(cfg, Options(args.config, args.db, args.backend, _node(args, cfg), args.dry_run, follow, journals))
    return d.run()


def _check_follows(given: list[Path], configured: list[Path], cfg: Config) -> None:
    """A log that can never be followed is a usage error at start, named with where it came from."""
    from ..follow import unfollowable
    for where, paths in (("--follow", given), (f"{cfg.path}: follow", configured)):
        for p in paths:
            why = unfollowable(p)
            if why:
                raise UsageError(f"{where} {p}: {why}")


def _journals(args, cfg: Config) -> list:
    """--journal and --journal-dir as journals to follow; any journal at all needs journalctl."""
    import shutil

    from ..journal import JOURNALCTL, JournalSpec
    out = ([JournalSpec()] if args.journal else []) + [JournalSpec(d.resolve()) for d in args.journal_dir]
    for j in out + cfg.daemon.journals:
        if j.directory is not None and j.directory.exists() and not j.directory.is_dir():
            raise UsageError(f"{j.name}: not a directory (name the directory that holds the *.journal files)")
    if (out or cfg.daemon.journals) and shutil.which(JOURNALCTL) is None:
        raise UsageError(f"following the journal needs {JOURNALCTL} (systemd) on PATH")
    return out


def cmd_reload(args, cfg: Config) -> int:
    from ..export import SYSTEMD_HINT, unwritable_exports
    from ..pidfile import default_pid_file, send_reload
    from ..rules import check_config_references
    from .common import _ruleset
    check_config_references(cfg, _ruleset(cfg))     # what the daemon would refuse, refused here
    pid = send_reload(cfg.daemon.pid_file or default_pid_file())
    print(f"asked logban (pid {pid}) to reload")
    # As the daemon sees them (its mount namespace, through /proc): the unit's sandbox may
    # leave an [[export]] path read-only that this shell can write.
    for o, why in unwritable_exports(cfg.exports, Path(f"/proc/{pid}/root")):
        print(safe(f"logban: warning: export {o.format} to {o.path}: the daemon cannot write it ({why}){SYSTEMD_HINT}"),
              file=sys.stderr)
    return 0
