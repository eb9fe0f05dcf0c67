"""`logban report`: the period's offences and bans aggregated from the store (`collect`),
rendered as one self-contained HTML page (`html`) or as plain text (`text`)."""
from __future__ import annotations

from .collect import Digest, collect  # noqa: F401 - API
from .html import render_html  # noqa: F401 - API
from .text import render_text  # noqa: F401 - API
