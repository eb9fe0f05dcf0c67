"""`logban run` and `reload`: the daemon."""
from __future__ import annotations

from ..config import Config
from .common import _node


def cmd_run(args, cfg: Config) -> int:
    import logging

    from ..daemon import Daemon, Options, SafeFormatter
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter("%(asctime)s logban: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    follow = [p.resolve() if not p.is_absolute() else p for p in args.follow]
    d = Daemon(cfg, Options(args.config, args.db, args.backend, _node(args, cfg), args.dry_run, follow))
    return d.run()


def cmd_reload(args, cfg: Config) -> int:
    from ..daemon import default_pid_file, send_reload
    pid = send_reload(cfg.daemon.pid_file or default_pid_file())
    print(f"asked logban (pid {pid}) to reload")
    return 0
