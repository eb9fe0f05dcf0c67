"""`logban completion bash|zsh`: a completion script made from the command line's grammar.

shtab writes it from the argparse parser itself, once, at install time: the script
completes every command, subcommand, option and choice, and needs no hook in logban
(argcomplete instead runs the program at every press of Tab, paying SQLAlchemy's import
each time, and needs a global hook in bash)."""
from __future__ import annotations

import sys

from ..config import Config
from ..errors import UsageError
from .args import build_parser


def cmd_completion(args, cfg: Config) -> int:
    try:
        import shtab
    except ImportError:
        raise UsageError("completion needs shtab (pip install shtab)") from None
    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0
