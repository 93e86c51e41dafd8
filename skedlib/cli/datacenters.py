"""``sked --all-datacenters tasks|hosts|get services`` and ``sked federate``: one view
over the datacenters of the current context, and the federation step that writes a
global service into each (docs/datacenters.md, :mod:`skedlib.federation`).

Each datacenter is read (or written) in a thread of its own within ``--dc-timeout``
seconds; one that does not answer is reported on stderr, one line each
(``sked: datacenter west: unreachable: …``; ``not written: …`` for ``federate``), and
in ``-o json|yaml`` as the ``unreachable`` list, instead of failing the command. With
``-w/--watch`` each datacenter is followed by a thread of its own
(:class:`~skedlib.federation.DatacenterFollower`): the view is drawn again when any of
them changes, goes away (then reported in the frame) or comes back.

Exit status: 0 when every datacenter answered; :data:`PARTIAL` (3) when some did not but
at least one did (what is shown or written is theirs); 1 when none answered, or on an
error before any datacenter is asked (e.g. a context without datacenters).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec

from skedlib.cli import config
from skedlib.cli.args import positive_number
from skedlib.cli.output import (
    Column,
    Listing,
    OutputOptions,
    Screen,
    render_listing,
    show,
    wait_in_slices,
)
from skedlib.cli.views import host_listing, service_listing, task_listing
from skedlib.client import Client
from skedlib.errors import ValidationError, one_line
from skedlib.federation import (
    DEFAULT_TIMEOUT,
    Datacenter,
    DatacenterFollower,
    DatacenterOutcome,
    each_datacenter,
    federate,
    parse_global,
    unreachable,
)
from skedlib.store.sqlite import read_only_url
from skedlib.views import read_view

__all__ = ["PARTIAL", "add_options", "add_parser", "add_serve_options", "cmd_all_datacenters",
           "cmd_federate", "context_datacenters", "merged_listing", "serve_datacenters"]

PARTIAL = 3
"""The exit status when some datacenters answered and some did not."""

AGGREGATED = ("tasks", "hosts", "get")
"""The commands that take ``--all-datacenters`` (``get`` for services only)."""


def add_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--all-datacenters`` and ``--dc-timeout`` (on ``sked`` itself when ``top``, and
    after each command of :data:`AGGREGATED`)."""
    parser.add_argument("--all-datacenters", action="store_true",
                        default=False if top else argparse.SUPPRESS,
                        help="read every datacenter of the context and show their rows "
                             "together, each marked with its datacenter (tasks, hosts, "
                             "get services)")
    parser.add_argument("--dc-timeout", type=positive_number,
                        default=DEFAULT_TIMEOUT if top else argparse.SUPPRESS,
                        metavar="SECONDS",
                        help="a datacenter that has not answered after this long is "
                             f"reported and left out (default {DEFAULT_TIMEOUT:g})")


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """``sked serve --datacenters [--dc-timeout S]``: serve ``/v1/all-datacenters/…`` over
    the datacenters of the context."""
    parser.add_argument("--datacenters", action="store_true",
                        help="also serve /v1/all-datacenters/tasks|hosts|services and the "
                             "console's datacenter view over the datacenters of the "
                             "context (sked config set-datacenter)")
    parser.add_argument("--dc-timeout", type=positive_number, default=argparse.SUPPRESS,
                        metavar="SECONDS",
                        help="a datacenter that has not answered after this long is "
                             f"reported as unreachable (default {DEFAULT_TIMEOUT:g})")


def serve_datacenters(args: argparse.Namespace) -> list[Datacenter]:
    """The datacenters ``sked serve`` reads: none without ``--datacenters``, else those of
    the context (read-only), the same list as ``sked --all-datacenters`` reads."""
    if not getattr(args, "datacenters", False):
        return []
    return context_datacenters(config.resolve(args), read_only=True)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``federate`` to ``sked``'s subcommands."""
    p = sub.add_parser("federate", parents=[common],
                       help="write a global manifest's services into every datacenter "
                            "of the context")
    p.add_argument("-f", "--file", required=True, metavar="FILE",
                   help="global manifest: a manifest plus placement (per_datacenter, or "
                        "total with weights) per service")
    p.add_argument("--dc-timeout", type=positive_number, default=DEFAULT_TIMEOUT,
                   metavar="SECONDS",
                   help=f"give up on a datacenter after this long (default "
                        f"{DEFAULT_TIMEOUT:g}); the others are written all the same")
    p.set_defaults(func=cmd_federate, needs_backend=False)


def context_datacenters(settings: config.Settings, *, read_only: bool) -> list[Datacenter]:
    """The datacenters ``settings``' context lists (a SQLite store opened read-only when
    ``read_only``); an error naming the context when it lists none. ``sked serve
    --datacenters`` serves the same list as the ``--all-datacenters`` commands read."""
    if not settings.datacenters:
        raise ValidationError(
            f"context {settings.context or '(none)'!r} lists no datacenters (add them: "
            "sked config set-datacenter CONTEXT NAME --backend URL)")
    return [Datacenter(name=name,
                       backend=read_only_url(url) if read_only and
                       urlsplit(url).scheme == "sqlite" else url,
                       prefix=prefix)
            for name, (url, prefix) in settings.datacenters.items()]


def _datacenters(args: argparse.Namespace, *, read_only: bool) -> list[Datacenter]:
    """The current context's datacenters; an error naming the context when it has none."""
    if getattr(args, "backend", None):
        raise ValidationError("--backend names one store; the datacenters come from the "
                              "context (sked config set-datacenter)")
    return context_datacenters(config.resolve(args), read_only=read_only)


def _report(outcomes: Sequence[DatacenterOutcome[Any]], what: str) -> int:
    """One stderr line per datacenter that failed (``what``: e.g. "not read"); the exit
    status."""
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        print(f"sked: datacenter {o.datacenter}: {what}: {o.error}", file=sys.stderr)
    if not failed:
        return 0
    return 1 if len(failed) == len(outcomes) else PARTIAL


def merged_listing(outcomes: Sequence[DatacenterOutcome[Listing[Any]]]) -> Listing[tuple[str, Any]]:
    """The listings of the datacenters that answered as one: a ``datacenter`` column
    first, ``datacenter`` in each object's JSON form, names ``DATACENTER/NAME``; the JSON
    form is ``{"items": [...], "unreachable": [{"datacenter", "error"}]}``."""
    listings = [(o.datacenter, o.value) for o in outcomes if o.value is not None]
    first = listings[0][1] if listings else None
    rows = [(dc, obj) for dc, listing in listings for obj in listing.objects]
    by_dc = dict(listings)

    def lift(col: Column[Any]) -> Column[tuple[str, Any]]:
        return Column(col.header, lambda r: col.cell(r[1]), wide=col.wide, state=col.state)

    def data(r: tuple[str, Any]) -> Any:
        value = by_dc[r[0]].data(r[1])
        return {"datacenter": r[0], **value} if isinstance(value, dict) else \
            {"datacenter": r[0], "object": value}

    def labels(r: tuple[str, Any]) -> Any:
        of = by_dc[r[0]].labels
        return of(r[1]) if of is not None else {}

    gone = msgspec.to_builtins(unreachable(outcomes))
    return Listing(
        first.kind if first else "object", rows,
        [Column("datacenter", lambda r: r[0]),
         *(lift(c) for c in (first.columns if first else []))],
        name=lambda r: f"{r[0]}/{by_dc[r[0]].name(r[1])}", data=data,
        labels=labels if first is None or first.labels is not None else None,
        empty=first.empty if first else "no datacenter answered",
        envelope=lambda items: {"items": items, "unreachable": gone})


def cmd_all_datacenters(args: argparse.Namespace) -> int:
    """``sked --all-datacenters tasks|hosts|get services [NAME]``."""
    command = args.command
    if command not in AGGREGATED or (command == "get" and args.kind != "service"):
        raise ValidationError("--all-datacenters: only tasks, hosts and get services")
    if getattr(args, "by_host", False):
        raise ValidationError("--all-datacenters: not with --by-host")
    produce: Callable[[Client], Listing[Any]]
    if command == "tasks":
        def produce(client: Client) -> Listing[Any]:
            return task_listing(read_view(client))
    elif command == "hosts":
        def produce(client: Client) -> Listing[Any]:
            return host_listing(read_view(client))
    else:
        def produce(client: Client) -> Listing[Any]:
            return service_listing(read_view(client), args.name)
    datacenters = _datacenters(args, read_only=True)
    if getattr(args, "watch", False):
        return _watch(datacenters, lambda dc, client: produce(client), args)
    outcomes = each_datacenter(datacenters, lambda dc, client: produce(client),
                               timeout=args.dc_timeout)
    status = _report(outcomes, "unreachable")
    show(None, args, lambda: merged_listing(outcomes))
    return status


def _watch(datacenters: Sequence[Datacenter],
           read: Callable[[Datacenter, Client], Listing[Any]], args: argparse.Namespace) -> int:
    """``--watch``: draw the merged listing again whenever a datacenter's store changes,
    or a datacenter goes away or comes back; the frame's last lines say which did not
    answer (``-o json|yaml``: the ``unreachable`` list). Ctrl-C exits 0."""
    opts = OutputOptions.from_args(args)
    screen = Screen()
    with DatacenterFollower(datacenters, read, timeout=args.dc_timeout).start() as follower:
        try:
            follower.ready()
            while True:
                outcomes = follower.outcomes()
                body = render_listing(merged_listing(outcomes), opts)
                if opts.format not in ("json", "yaml"):  # those list them already
                    body += "".join(f"\ndatacenter {o.datacenter}: unreachable: {o.error}"
                                    for o in outcomes if not o.ok)
                answered = sum(o.ok for o in outcomes)
                screen.draw(f"{answered} of {len(outcomes)} datacenters answered", body)
                wait_in_slices(follower.wait, 60.0)
        except KeyboardInterrupt:
            return 0


def cmd_federate(client: None, args: argparse.Namespace) -> int:
    """``sked federate -f FILE [--dc-timeout S]``: expand the global manifest and apply each
    datacenter's part to its own store; prints ``DATACENTER: services/web created``."""
    del client
    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{args.file}: cannot read: {exc}") from None
    doc = parse_global(text, args.file)
    for w in doc.document.warnings:
        print(f"warning: {one_line(w)}", file=sys.stderr)
    outcomes = federate(_datacenters(args, read_only=False), doc, timeout=args.dc_timeout)
    for o in outcomes:
        if o.value is not None:
            for verb, labels in (("created", o.value.created),
                                 ("configured", o.value.configured),
                                 ("unchanged", o.value.unchanged)):
                for label in labels:
                    print(f"{o.datacenter}: {label} {verb}", flush=True)
    return _report(outcomes, "not written")

