"""Where the API's bearer token comes from: ``$SKED_API_TOKEN``, a token file given by the
operator (``--token-file``), or the token file ``sked serve`` creates on its first start
(:func:`default_token_path`: beside a SQLite store, else in the user's configuration
directory). Clients on the same machine find it the same way (:func:`find_token`).

A token file is created with mode 0600 (never readable by others, not even for an
instant) and linked into place whole. It is trusted only when it is a regular file owned
by the current user that no one else can read or write: a file planted by another user
(in a shared directory) would hand them the token.
"""

from __future__ import annotations

import os
from pathlib import Path

from skedlib._files import SecretFileError, create_secret, read_secret
from skedlib.errors import ValidationError
from skedlib.store.base import Backend
from skedlib.store.sqlite import SqliteBackend

__all__ = ["READ_TOKEN_ENV", "TOKEN_ENV", "create_token_file", "default_token_path",
           "find_token", "read_only_token_for_serve", "read_token_file", "token_for_serve"]

TOKEN_ENV = "SKED_API_TOKEN"
"""The environment variable holding the token (never put it on a command line)."""

READ_TOKEN_ENV = "SKED_API_READ_TOKEN"
"""The environment variable holding the optional read-only token."""


def default_token_path(backend: Backend) -> Path:
    """``<store file>.api-token`` for a SQLite store (whoever may read the store may use
    the API), else ``$XDG_CONFIG_HOME/skedlib/api-token`` (``~/.config``)."""
    if isinstance(backend, SqliteBackend) and str(backend.path) != ":memory:":
        return backend.path.with_name(backend.path.name + ".api-token")
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "skedlib" / "api-token"


def read_token_file(path: Path) -> str:
    """The token in ``path``; raises :class:`ValidationError` (one line naming the file)
    unless it is a regular file of this user's that no one else can read or write."""
    try:
        return read_secret(path, owner_only=True)
    except SecretFileError as exc:
        raise ValidationError(f"token file {path}: {exc}") from None
    except OSError as exc:
        raise ValidationError(f"token file {path}: {exc.strerror or exc}") from None


def create_token_file(path: Path) -> str:
    """A new random token written to the new file ``path`` (mode 0600 from its creation;
    an existing file or symlink is never overwritten nor followed); its directory is
    created 0700 when missing. Raises FileExistsError if ``path`` exists."""
    return create_secret(path)


def find_token(backend: Backend, token_file: Path | None = None) -> str | None:
    """The token a client on this machine sends: ``token_file`` if given, else
    ``$SKED_API_TOKEN``, else :func:`default_token_path` if it exists, else None."""
    if token_file is not None:
        return read_token_file(token_file)
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    path = default_token_path(backend)
    return read_token_file(path) if path.exists() else None


def token_for_serve(backend: Backend, token_file: Path | None, public: bool
                    ) -> tuple[str, str]:
    """``sked serve``'s token and where it came from (for the start-up line; never the
    token itself): ``token_file``, else ``$SKED_API_TOKEN``, else the default file, made
    on first start. ``public`` (listening beyond loopback) needs one of the first two."""
    if token_file is not None:
        return read_token_file(token_file), f"token file {token_file}"
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV], f"${TOKEN_ENV}"
    if public:
        raise ValidationError(f"--public: an explicit token is required; set ${TOKEN_ENV} "
                              "or --token-file FILE")
    path = default_token_path(backend)
    try:
        return create_token_file(path), f"token file {path} (new)"
    except FileExistsError:
        return read_token_file(path), f"token file {path}"
    except OSError as exc:
        raise ValidationError(f"token file {path}: cannot create it: "
                              f"{exc.strerror or exc}") from None


def read_only_token_for_serve(token_file: Path | None) -> tuple[str | None, str]:
    """``sked serve``'s optional read-only token (``token_file``, else
    ``$SKED_API_READ_TOKEN``, else none) and where it came from."""
    if token_file is not None:
        return read_token_file(token_file), f"token file {token_file}"
    if os.environ.get(READ_TOKEN_ENV):
        return os.environ[READ_TOKEN_ENV], f"${READ_TOKEN_ENV}"
    return None, ""
