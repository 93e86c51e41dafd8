"""The one output layer of ``sked``: every get and list command shows what it read here.

A command describes what it shows as a :class:`Listing` (the objects, their table
columns, their name, their JSON form, their labels) and hands it to :func:`show` with
the :class:`OutputOptions` that :func:`add_output_options` added to its parser:

- ``-o table|wide|json|yaml|name``: a table (``wide`` adds the columns marked wide),
  the JSON form (always structured: one object for one named object, else a list),
  YAML of the same, or ``KIND/NAME`` lines;
- ``--no-headers`` (tables), ``--sort-by FIELD`` (a dotted path into the JSON form,
  e.g. ``version`` or ``update.max_parallel``), ``-l key=value`` (selectors: every pair
  must match the object's labels — a service's labels, a host's attributes);
- ``-w/--watch``: draw again whenever the store changes *and* the text differs
  (:func:`skedlib.runtime.wait_for_change`, no polling where the backend watches);
  Ctrl-C exits 0;
- colour on a terminal (states: healthy green, failing red, pending yellow), never when
  stdout is not a terminal, with ``--no-color`` or ``$NO_COLOR`` set.

A new subcommand plugs in by calling :func:`add_output_options` on its parser and
``show(client, args, lambda: Listing(...))`` in its handler.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from skedlib.codecs import to_builtins, to_yaml
from skedlib.errors import ValidationError
from skedlib.keys import validate_name
from skedlib.runtime import wait_for_change

__all__ = [
    "CTRL_C_SLICE",
    "FORMATS",
    "Column",
    "Listing",
    "OutputOptions",
    "Screen",
    "add_output_options",
    "colour_enabled",
    "columns",
    "paint",
    "parse_selector",
    "render",
    "render_listing",
    "show",
    "table",
    "wait_in_slices",
]

FORMATS = ("table", "wide", "json", "yaml", "name")
"""The values of ``-o``."""

T = TypeVar("T")

_STYLES = {"green": "32", "red": "31", "yellow": "33", "dim": "2", "bold": "1"}
STATE_STYLES: dict[str, str] = {
    **dict.fromkeys(("healthy", "true", "ok", "running", "complete", "completed",
                     "succeeded", "live"), "green"),
    **dict.fromkeys(("unhealthy", "failing", "failed", "false", "rejected", "host down",
                     "error", "canceled", "lost", "oom", "unschedulable"), "red"),
    **dict.fromkeys(("pending", "starting", "queued", "unassigned", "draining",
                     "in_progress", "progressing", "not converged"), "yellow"),
}
"""Colour of a state cell by its text (a cell whose text is not here is not coloured)."""


# -- tables -------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "-"
    if value is None or value == "":
        return "-"
    return str(value)


def paint(text: str, style: str | None, colour: bool = True) -> str:
    """``text`` in ``style`` (a key of the ANSI styles: green, red, yellow, dim, bold)
    when ``colour``; else ``text`` as it is."""
    if not colour or not style:
        return text
    return f"\x1b[{_STYLES[style]}m{text}\x1b[0m"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, no_headers: bool = False,
          styles: Sequence[Callable[[str], str | None] | None] = (),
          colour: bool = False) -> str:
    """A plain aligned table, as in Sked's ``sked tasks``: headers, a rule, rows.

    ``styles[i]`` (if given) names the colour of a cell of column ``i`` from its text;
    colour is added after the padding, so columns stay aligned."""
    body = [[_cell(v) for v in row] for row in rows]
    cells = body if no_headers else [[str(h) for h in headers], *body]
    if not cells:
        return ""
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        parts = []
        for i, (c, w) in enumerate(zip(r, widths, strict=True)):
            style_of = styles[i] if i < len(styles) else None
            styled = n > 0 or no_headers
            parts.append(paint(c, style_of(c) if style_of and styled else None, colour)
                         + " " * (w - len(c)))
        lines.append("   ".join(parts).rstrip())
    if not no_headers:
        lines.insert(1, "-" * len("   ".join(c.ljust(w) for c, w in
                                              zip(cells[0], widths, strict=True)).rstrip()))
    return "\n".join(lines)


def state_style(text: str) -> str | None:
    """The colour of a state cell (:data:`STATE_STYLES`): of its whole text, else of its
    text before `` (`` or ``:`` (``progressing (0/3 healthy)``)."""
    text = text.lower()
    return STATE_STYLES.get(text) or STATE_STYLES.get(text.split(" (")[0].split(":")[0])


# -- what a command shows -------------------------------------------------------------------
@dataclass(frozen=True)
class Column(Generic[T]):
    """A table column: its header, the cell of an object, whether only ``-o wide`` shows
    it, and whether its cells are states to colour."""

    header: str
    cell: Callable[[T], Any]
    wide: bool = False
    state: bool = False


def columns(headers: Sequence[str], row: Callable[[T], Sequence[Any]], *,
            states: Sequence[str] = ()) -> list[Column[T]]:
    """Columns from a function giving all the cells of a row at once (``row(obj)[i]`` is
    the cell under ``headers[i]``); the headers in ``states`` are coloured as states."""
    def nth(i: int) -> Callable[[T], Any]:
        return lambda o: row(o)[i]
    return [Column(h, nth(i), state=h in states) for i, h in enumerate(headers)]


@dataclass
class Listing(Generic[T]):
    """What a get or list command shows.

    ``kind`` prefixes names in ``-o name`` (``service/web``); ``data`` is the JSON form
    of one object (``--sort-by`` paths are into it); ``labels`` gives the labels ``-l``
    selects on (None: the kind has none, ``-l`` is refused); ``single``: one named
    object, shown as an object rather than a list; ``empty``: the table text when there
    is nothing (instead of headers alone); ``text``: what replaces the table (``table``
    and ``wide``), e.g. ``sked tasks --by-host``; ``envelope``: wraps the JSON/YAML form
    of the (selected) objects, e.g. ``sked --all-datacenters`` adds ``unreachable``."""

    kind: str
    objects: Sequence[T]
    columns: Sequence[Column[T]]
    name: Callable[[T], str]
    data: Callable[[T], Any] = to_builtins
    labels: Callable[[T], Mapping[str, str]] | None = None
    single: bool = False
    empty: str = ""
    text: Callable[[Sequence[T], OutputOptions], str] | None = None
    envelope: Callable[[Any], Any] | None = None


@dataclass
class OutputOptions:
    """The output options of one command (see :func:`add_output_options`)."""

    format: str = "table"
    no_headers: bool = False
    sort_by: str = ""
    selector: dict[str, str] = field(default_factory=dict)
    watch: bool = False
    colour: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OutputOptions:
        """The options ``args`` holds (defaults for any the command does not take)."""
        return cls(format=getattr(args, "output", "table"),
                   no_headers=getattr(args, "no_headers", False),
                   sort_by=getattr(args, "sort_by", "") or "",
                   selector=dict(getattr(args, "selector", None) or []),
                   watch=getattr(args, "watch", False),
                   colour=colour_enabled(args))


def colour_enabled(args: argparse.Namespace | None = None) -> bool:
    """Colour only on a terminal, never with ``--no-color`` or a non-empty ``$NO_COLOR``
    (https://no-color.org)."""
    if args is not None and getattr(args, "no_color", False):
        return False
    if os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


def parse_selector(text: str) -> list[tuple[str, str]]:
    """An argparse type: ``key=value[,key=value…]`` → pairs; keys and values are
    validated as names are (no ``/``, whitespace, control characters, …)."""
    pairs = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"bad selector {part!r}: expected key=value")
        try:
            validate_name(key, "label key")
            validate_name(value, "label value")
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(f"bad selector {part!r}: {exc}") from None
        pairs.append((key, value))
    return pairs


class _SelectorAction(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), *values])


def add_output_options(parser: argparse.ArgumentParser, *, default: str = "table",
                       formats: Sequence[str] = FORMATS, watch: bool = True,
                       selector: str | None = None) -> None:
    """Add ``-o``, ``--no-headers``, ``--sort-by``, ``-w/--watch`` (unless ``watch`` is
    false) and, when ``selector`` says what is selected on, ``-l`` to ``parser``."""
    parser.add_argument("-o", "--output", choices=formats, default=default, metavar="FORMAT",
                        help=f"output format: {', '.join(formats)} (default {default}); "
                             "json and yaml are the structured form")
    parser.add_argument("--no-headers", action="store_true",
                        help="tables without the header and rule lines")
    parser.add_argument("--sort-by", default="", metavar="FIELD",
                        help="sort by a field of the JSON form, a dotted path "
                             "(e.g. name, version, update.max_parallel)")
    if selector is not None:
        parser.add_argument("-l", "--selector", type=parse_selector, action=_SelectorAction,
                            default=[], metavar="KEY=VALUE",
                            help=f"only objects whose {selector} include every "
                                 "KEY=VALUE given (repeatable, or comma-separated)")
    if watch:
        parser.add_argument("-w", "--watch", action="store_true",
                            help="keep showing: redraw when what is shown changes "
                                 "(Ctrl-C exits)")


# -- rendering ------------------------------------------------------------------------------
_MISSING = object()


def _path(data: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return _MISSING
    return data


def _sort_key(value: Any) -> tuple[int, str, Any]:
    """Missing values last; numbers before text; lists and objects by their JSON."""
    if value is _MISSING or value is None:
        return (2, "", "")
    if isinstance(value, bool | int | float):
        return (0, "", float(value))
    if isinstance(value, str):
        return (1, "", value)
    return (1, "", json.dumps(value, sort_keys=True, default=str))


def select(listing: Listing[T], opts: OutputOptions) -> list[T]:
    """The objects of ``listing`` that ``opts`` selects, in its ``--sort-by`` order."""
    objects = list(listing.objects)
    if opts.selector:
        if listing.labels is None:
            raise ValidationError(f"{listing.kind}: -l: this kind has no labels to select on")
        labels = listing.labels
        objects = [o for o in objects
                   if all(labels(o).get(k) == v for k, v in opts.selector.items())]
    if opts.sort_by:
        keyed = [(_path(listing.data(o), opts.sort_by), o) for o in objects]
        if objects and all(k is _MISSING for k, _ in keyed):
            raise ValidationError(f"--sort-by {opts.sort_by}: no {listing.kind} has this "
                                  "field (a dotted path of the JSON form, see -o json)")
        objects = [o for _, o in sorted(keyed, key=lambda ko: _sort_key(ko[0]))]
    return objects


def render_listing(listing: Listing[T], opts: OutputOptions) -> str:
    """``listing`` as ``opts`` says (format, selectors, sorting, headers, colour)."""
    objects = select(listing, opts)
    fmt = opts.format
    if fmt in ("json", "yaml"):
        data: Any = [listing.data(o) for o in objects]
        if listing.single:
            data = data[0] if data else {}
        if listing.envelope is not None:
            data = listing.envelope(data)
        return (json.dumps(data, indent=2, ensure_ascii=False) if fmt == "json"
                else to_yaml(data).rstrip())
    if fmt == "name":
        return "\n".join(f"{listing.kind}/{listing.name(o)}" for o in objects)
    if not objects and listing.empty and not opts.no_headers:
        return listing.empty
    if listing.text is not None:
        return listing.text(objects, opts)
    columns = [c for c in listing.columns if fmt == "wide" or not c.wide]
    return table([c.header for c in columns], [[c.cell(o) for c in columns] for o in objects],
                 no_headers=opts.no_headers,
                 styles=[state_style if c.state else None for c in columns],
                 colour=opts.colour)


def render(objects: Sequence[Any], fmt: str, headers: Sequence[str],
           row: Any, single: bool = False) -> str:
    """``objects`` as a table (``row(obj)`` gives the cells), or JSON / YAML documents:
    :func:`render_listing` for a caller without a :class:`Listing`."""
    return render_listing(Listing("object", objects, columns(headers, row), name=str,
                                  single=single),
                          OutputOptions(format=fmt))


# -- showing, once or watching --------------------------------------------------------------
def show(client: Any, args: argparse.Namespace,
         produce: Callable[[], Listing[Any] | str]) -> int:
    """Print what ``produce()`` reads (a :class:`Listing`, rendered with the options in
    ``args``, or finished text); with ``--watch``, print it again whenever the store
    changes under the client's prefix and the text differs. Returns the exit status."""
    opts = OutputOptions.from_args(args)

    def text() -> str:
        shown = produce()
        return shown if isinstance(shown, str) else render_listing(shown, opts)

    if not opts.watch:
        out = text()
        if out:
            print(out)
        return 0
    return watch(client, text)


class Screen:
    """The frames of ``--watch`` on ``out`` (stdout): :meth:`draw` shows a frame when its
    text differs from the one shown. On a terminal the screen is cleared before each
    frame; otherwise frames are separated by a blank line. Each frame starts with the
    time, where it was read (e.g. ``revision 12``) and ``(watching; Ctrl-C exits)``."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.shown: str | None = None

    def draw(self, where: str, body: str) -> None:
        """Show ``body`` (read at ``where``) unless it is what is shown already."""
        if body == self.shown:
            return
        if self.tty:
            self.out.write("\x1b[H\x1b[2J")
        stamp = time.strftime("%H:%M:%S")
        self.out.write(f"{stamp}  {where}  (watching; Ctrl-C exits)\n"
                       + (f"{body}\n" if body else ""))
        if not self.tty:
            self.out.write("\n")
        self.out.flush()
        self.shown = body


CTRL_C_SLICE = 1.0
"""Longest wait, in seconds, of a command's main thread for a change: Ctrl-C may be
delivered to another thread (a store client's), and the main thread acts on it only once
its wait returns."""


def wait_in_slices(wait: Callable[[float], bool], seconds: float) -> None:
    """Call ``wait(slice)`` (True: something happened) until it says so or ``seconds``
    have passed, each call at most :data:`CTRL_C_SLICE` long, so Ctrl-C is acted on at
    once whichever thread it was delivered to."""
    deadline = time.monotonic() + seconds
    while not wait(CTRL_C_SLICE) and time.monotonic() < deadline:
        pass


def _changed(backend: Any, prefix: str, revision: int, seconds: float) -> bool:
    return wait_for_change(backend, prefix, revision, seconds) is not None


def watch(client: Any, text: Callable[[], str], out: Any = None) -> int:
    """Draw ``text()``; draw again when the store changes and the text differs from what
    is shown (:class:`Screen`); Ctrl-C exits 0."""
    screen = Screen(out)
    backend = client.backend
    prefix = client.keys.prefix
    try:
        while True:
            revision = backend.current_revision()
            screen.draw(f"revision {revision}", text())
            # wait_for_change returns None when its time runs out (or the store is away):
            # read again after 30 s then too, which is the fallback poll of a backend
            # without watch
            wait_in_slices(functools.partial(_changed, backend, prefix, revision), 30.0)
    except KeyboardInterrupt:
        return 0

