"""Errors that reach the user as one line.

`UsageError` is the user's mistake (bad config, rule pack, argument): exit 2.
Anything else that escapes a command is a runtime failure: exit 1.
"""
from __future__ import annotations


class UsageError(Exception):
    """A mistake in what the user gave us; the message names the file, key or rule."""

    exit_status = 2


class StoreError(Exception):
    """The database cannot be opened, read or migrated: a runtime failure (exit 1), told in one line."""


class ExportError(Exception):
    """An export file could not be written or its map built (permission, missing tool): exit 1."""


class FirewallError(Exception):
    """The kernel firewall refused or failed (missing tool, no permission): exit 1, one line."""
