"""Command-line pieces shared by ``sked``, ``skedlib-agent`` and ``skedlib-scheduler``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from typing import NoReturn, TypeVar

from skedlib.api.listen import parse_listen
from skedlib.errors import SkedError, ValidationError, one_line
from skedlib.keys import DEFAULT_PREFIX
from skedlib.metrics import MetricsServer, serve
from skedlib.plugins import default_backend_url
from skedlib.store.credentials import redact_url

K = TypeVar("K", bound=str)

__all__ = ["OneLineParser", "add_backend_options", "kind_of", "metrics_listen", "positive_number",
           "start_metrics"]


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, like every other
    error of the programs (``sked: error: … (see sked get --help)``), with exit status 2.
    Parsers of its subcommands are of the same class."""

    def error(self, message: str) -> NoReturn:
        program = self.prog.split()[0]
        self.exit(2, one_line(f"{program}: error: {message} (see {self.prog} --help)") + "\n")


def kind_of(aliases: Mapping[str, K], refusal: str) -> Callable[[str], K]:
    """An argparse ``type`` that maps a kind as typed (``services``, ``svc`` …) to its
    name through ``aliases``; anything else is refused with ``refusal`` (``{value!r}`` is
    put in its place)."""
    def parse(value: str) -> K:
        try:
            return aliases[value]
        except KeyError:
            raise argparse.ArgumentTypeError(refusal.format(value=value)) from None
    return parse


def positive_number(text: str) -> float:
    """An argparse type: a number greater than zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def metrics_listen(text: str) -> tuple[str, int]:
    """An argparse type: ``--metrics [HOST]:PORT`` → (host, port). HOST left out is
    127.0.0.1, not every interface: the metrics are served without a token, so reaching
    them from elsewhere is the operator's explicit choice (``0.0.0.0:PORT``)."""
    try:
        host, port = parse_listen(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(f"expected [HOST]:PORT, got {text!r}") from None
    return host or "127.0.0.1", port


def start_metrics(listen: tuple[str, int] | None, program: str) -> MetricsServer | None:
    """Serve ``GET /metrics`` at ``listen`` (``--metrics``; None: not at all) and log
    where; raises :class:`SkedError` naming the address when it cannot listen there."""
    if listen is None:
        return None
    host, port = listen
    try:
        server = serve(host, port)
    except OSError as exc:
        raise SkedError(f"--metrics {host}:{port}: cannot listen there: "
                        f"{exc.strerror or exc}") from None
    shown = f"[{host}]" if ":" in host else host
    logging.getLogger(f"skedlib.{program.removeprefix('skedlib-')}").info(
        "metrics at http://%s:%d/metrics", shown, server.address[1])
    return server


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """``--backend URL`` (default ``$SKED_BACKEND``, else the embedded store) and
    ``--prefix``."""
    parser.add_argument("--backend", metavar="URL", default=None,
                        help="storage backend URL (default: $SKED_BACKEND or "
                             f"{redact_url(default_backend_url())})")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help="key prefix (default sked/)")
