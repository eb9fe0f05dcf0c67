"""`logban report`: the period's offences and bans aggregated from the store (`collect`),
rendered as one self-contained HTML page (`html`) or as plain text (`text`)."""
from __future__ import annotations

from .collect import Digest, collect
from .html import render_html
from .text import render_text
