"""logban: ban hostile mail clients, read from Postfix, sendmail and qmail logs."""

__version__ = "0.1.0"
