"""Secrets for backend URLs (passwords, tokens) that stay off the command line.

A command line is readable by every local user (``ps``, ``/proc/PID/cmdline``), so a
backend's secret can come from a file instead: :func:`read_secret_file` reads it and
refuses a file every user may read. A secret written in the URL still works, but
:func:`warn_secret_in_url` says so once per process (never printing the secret).
"""

from __future__ import annotations

import logging
import re
import threading

from skedlib._files import SecretFileError, read_secret
from skedlib.errors import BackendUnavailable

__all__ = ["read_secret_file", "redact_url", "warn_secret_in_url"]

log = logging.getLogger(__name__)
_warned: set[str] = set()
_warned_lock = threading.Lock()
_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|token)=)[^&#]*")
_USERINFO_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*):[^/?#]*@")


def redact_url(url: str) -> str:
    """``url`` of any backend with its secrets (``password=``, ``token=``, the password of
    ``user:password@``) replaced by ``***``, for help texts, messages and logs; plugins
    that parse their URLs redact them themselves (``backend.url`` is already redacted)."""
    return _USERINFO_PASSWORD.sub(r"\1:***@", _SECRET_QUERY.sub(r"\1***", url))


def read_secret_file(shown: str, what: str, path: str) -> str:
    """The secret in ``path`` (surrounding whitespace dropped: ``echo pw > file`` adds a
    newline).

    ``shown`` is the URL with its secrets hidden and ``what`` names the secret ("password
    file", "token file"); both go into the one-line :class:`BackendUnavailable` raised when
    the file cannot be read, is not a regular file, or every user may read it (then it is
    no secret: ``0600`` or ``0640`` are fine).
    """
    try:
        return read_secret(path, owner_only=False)
    except SecretFileError as exc:
        raise BackendUnavailable(f"{shown}: the {what} {path!r}: {exc}") from None
    except OSError as exc:
        raise BackendUnavailable(f"{shown}: cannot read the {what} {path!r}: "
                                 f"{exc.strerror or exc}") from exc


def warn_secret_in_url(shown: str, what: str, instead: str) -> None:
    """Log once per process and kind of secret that ``shown``'s URL holds ``what`` (e.g.
    "the password"), where other local users can read it, and where to give it
    ``instead``. ``shown`` must already have the secret hidden."""
    with _warned_lock:
        if what in _warned:
            return
        _warned.add(what)
    log.warning("%s: %s is written in the URL, where other local users can read it (ps, "
                "/proc); give it in %s instead", shown, what, instead)
