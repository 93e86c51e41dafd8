"""``sked config``: named contexts in a configuration file, and where each setting of a
command comes from.

The file is ``$SKED_CONFIG``, else ``$XDG_CONFIG_HOME/skedlib/config.yaml``
(``~/.config/skedlib/config.yaml``)::

    current-context: prod
    contexts:
      prod:
        backend: etcd://10.0.0.5:2379?password_file=/home/me/.etcd-pass
        prefix: sked/
        api: https://10.0.0.5:8443
        token-file: /home/me/.config/skedlib/prod.token
        datacenters:
          east:
            backend: etcd://10.1.0.5:2379?password_file=/home/me/.etcd-east
          west:
            backend: consul://10.2.0.5:8500?dc=west&token_file=/home/me/.consul-west
            prefix: sked/

A context may list its datacenters (docs/datacenters.md): each has its own store, read
or written by ``sked --all-datacenters tasks|hosts|get services`` and ``sked federate``
(:mod:`skedlib.cli.datacenters`); a datacenter without a prefix uses the context's.

It holds no secret: a backend URL with a password or token written in it is refused
(give it in a file: ``password_file=``), and the API token is named by its file. The file
is written with mode 0600 all the same (:func:`skedlib._files.write_private`): it says
where the stores are.

Precedence of each setting: the command-line flag (``--backend``, ``--prefix``), then the
environment (``$SKED_BACKEND``, ``$SKED_PREFIX``, ``$SKED_API``, ``$SKED_API_TOKEN``),
then the context (``--context NAME``, else ``$SKED_CONTEXT``, else the file's
``current-context``), then the default (the embedded store, ``sked/``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import msgspec
import yaml

from skedlib._files import private_dirs, write_private
from skedlib.cli.output import Column, Listing, add_output_options, show
from skedlib.client import default_backend_url
from skedlib.errors import NotFound, ValidationError, one_line
from skedlib.keys import DEFAULT_PREFIX, validate_name
from skedlib.store.credentials import redact_url

__all__ = ["ConfigFile", "Context", "DatacenterEntry", "Settings", "add_parsers",
           "cmd_config", "config_path", "resolve"]

CONFIG_ENV = "SKED_CONFIG"
CONTEXT_ENV = "SKED_CONTEXT"
PREFIX_ENV = "SKED_PREFIX"
API_ENV = "SKED_API"


class DatacenterEntry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True,
                      omit_defaults=True, rename="kebab"):
    """One datacenter of a context: its own store (no secret in the URL)."""

    backend: str
    prefix: str = ""
    """The key prefix in that store ('' : the context's, else sked/)."""


class Context(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True,
              rename="kebab"):
    """One named context: where a store and an API are. Empty fields are not set."""

    backend: str = ""
    prefix: str = ""
    api: str = ""
    """The REST API's base URL (``sked serve``), for commands that talk to it."""
    token_file: str = ""
    """The file holding the API token (never the token itself)."""
    datacenters: dict[str, DatacenterEntry] = msgspec.field(default_factory=dict)
    """The datacenters of this context by name, each with its own store."""


class ConfigFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, rename="kebab"):
    """The configuration file."""

    current_context: str = ""
    contexts: dict[str, Context] = msgspec.field(default_factory=dict)


class Settings(msgspec.Struct, kw_only=True):
    """What a command uses, resolved by precedence (see the module's doc)."""

    backend: str
    prefix: str
    api: str = ""
    token_file: str = ""
    context: str = ""
    """The context that was used ('' when none)."""
    datacenters: dict[str, tuple[str, str]] = msgspec.field(default_factory=dict)
    """The context's datacenters: name → (backend URL, prefix), the prefix resolved."""


def config_path() -> Path:
    """``$SKED_CONFIG``, else ``$XDG_CONFIG_HOME/skedlib/config.yaml``."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "skedlib" / "config.yaml"


def load(path: Path | None = None) -> ConfigFile:
    """The configuration file (empty when it does not exist); raises
    :class:`ValidationError` naming the file and the field when it does not decode."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ConfigFile()
    except OSError as exc:
        raise ValidationError(f"{path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
        return msgspec.convert(data, ConfigFile)
    except yaml.YAMLError as exc:
        raise ValidationError(f"{path}: malformed YAML: {one_line(str(exc))}") from None
    except msgspec.ValidationError as exc:
        raise ValidationError(f"{path}: {exc}") from None


def save(config: ConfigFile, path: Path | None = None) -> Path:
    """Write ``config`` (mode 0600, its directory 0700 when created)."""
    path = path or config_path()
    private_dirs(path.parent, narrow_existing=False)
    data = yaml.safe_dump(msgspec.to_builtins(config), sort_keys=False)
    write_private(path, data.encode())
    return path


def _check_context(name: str, ctx: Context) -> None:
    validate_name(name, "context name")
    urls = [("backend", ctx.backend)] + [(f"datacenters.{dc}.backend", entry.backend)
                                         for dc, entry in ctx.datacenters.items()]
    for dc in ctx.datacenters:
        validate_name(dc, f"context {name!r}: datacenter name")
    for field, url in urls:
        if url and redact_url(url) != url:
            raise ValidationError(f"context {name!r}: field {field}: the URL holds a "
                                  "secret; give it in a file (e.g. password_file=PATH) so "
                                  "the configuration file holds none")


def resolve(args: argparse.Namespace) -> Settings:
    """The settings of this command: flag > environment > context > default."""
    explicit = getattr(args, "context", None)
    config = load()
    name = explicit or os.environ.get(CONTEXT_ENV) or config.current_context
    ctx = Context()
    if name:
        if name not in config.contexts:
            raise NotFound(f"context {name!r} not found in {config_path()} "
                           "(sked config get-contexts lists them)")
        ctx = config.contexts[name]
    prefix = (getattr(args, "prefix", None) or os.environ.get(PREFIX_ENV) or ctx.prefix
              or DEFAULT_PREFIX)
    return Settings(
        backend=(getattr(args, "backend", None) or os.environ.get("SKED_BACKEND")
                 or ctx.backend or default_backend_url()),
        prefix=prefix, api=os.environ.get(API_ENV) or ctx.api,
        token_file=ctx.token_file, context=name or "",
        datacenters={dc: (e.backend, e.prefix or prefix)
                     for dc, e in sorted(ctx.datacenters.items())})


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``config`` and its subcommands to ``sked``'s subcommands."""
    p = sub.add_parser("config", help="named contexts: which store and API a command uses",
                       description=f"Contexts live in {config_path()} ($SKED_CONFIG; "
                                   "$XDG_CONFIG_HOME). A setting comes from its flag, else "
                                   "the environment, else the context, else the default.")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    c = csub.add_parser("get-contexts", help="list the contexts (* marks the current one)")
    add_output_options(c, watch=False)
    c = csub.add_parser("current-context", help="print the current context's name")
    c = csub.add_parser("use-context", help="make a context the current one")
    c.add_argument("name", metavar="NAME", help="the context")
    c = csub.add_parser("set-context",
                        help="create a context or change some of its settings")
    c.add_argument("name", metavar="NAME", help="the context")
    c.add_argument("--backend", default=None, metavar="URL",
                   help="storage backend URL (no password in it: use password_file=)")
    c.add_argument("--prefix", default=None, help="key prefix (default sked/)")
    c.add_argument("--api", default=None, metavar="URL",
                   help="REST API base URL (sked serve), e.g. https://10.0.0.5:8443")
    c.add_argument("--token-file", default=None, metavar="FILE",
                   help="file holding the API token (the token is never stored here)")
    c.add_argument("--use", action="store_true", help="also make it the current context")
    c = csub.add_parser("delete-context", help="remove a context")
    c.add_argument("name", metavar="NAME", help="the context")
    c = csub.add_parser("set-datacenter",
                        help="add a datacenter to a context, or change its store")
    c.add_argument("name", metavar="CONTEXT", help="the context (created when missing)")
    c.add_argument("datacenter", metavar="DATACENTER", help="the datacenter's name")
    c.add_argument("--backend", required=True, metavar="URL",
                   help="the datacenter's storage backend URL (no password in it: use "
                        "password_file= or token_file=)")
    c.add_argument("--prefix", default=None,
                   help="key prefix in that store (default: the context's)")
    c = csub.add_parser("delete-datacenter", help="remove a datacenter from a context")
    c.add_argument("name", metavar="CONTEXT", help="the context")
    c.add_argument("datacenter", metavar="DATACENTER", help="the datacenter's name")
    for choice in csub.choices.values():
        choice.set_defaults(func=cmd_config, needs_backend=False)
    del common


def cmd_config(client: None, args: argparse.Namespace) -> int:
    """``sked config get-contexts|current-context|use-context|set-context|delete-context``."""
    del client
    config = load()
    command = args.config_command
    if command == "get-contexts":
        rows = [{"name": n, "current": n == config.current_context,
                 **msgspec.to_builtins(c)} for n, c in sorted(config.contexts.items())]
        listing = Listing[dict[str, Any]](
            "context", rows, [
                Column("current", lambda r: "*" if r["current"] else ""),
                Column("name", lambda r: r["name"]),
                Column("backend", lambda r: r.get("backend", "")),
                Column("prefix", lambda r: r.get("prefix", "")),
                Column("api", lambda r: r.get("api", "")),
                Column("datacenters", lambda r: sorted(r.get("datacenters", {})), wide=True),
                Column("token file", lambda r: r.get("token-file", ""), wide=True)],
            name=lambda r: r["name"], data=lambda r: r,
            empty=f"no contexts in {config_path()} (add one: sked config set-context NAME "
                  "--backend URL)")
        return show(None, args, lambda: listing)
    if command == "current-context":
        if not config.current_context:
            raise NotFound(f"no current context in {config_path()}")
        print(config.current_context)
        return 0
    if command == "use-context":
        if args.name not in config.contexts:
            raise NotFound(f"context {args.name!r} not found in {config_path()}")
        config.current_context = args.name
        save(config)
        print(f"current context: {args.name}")
        return 0
    if command == "delete-context":
        if config.contexts.pop(args.name, None) is None:
            raise NotFound(f"context {args.name!r} not found in {config_path()}")
        if config.current_context == args.name:
            config.current_context = ""
        save(config)
        print(f"context {args.name} deleted")
        return 0
    ctx = config.contexts.get(args.name, Context())
    if command in ("set-datacenter", "delete-datacenter"):
        return _set_datacenter(config, ctx, args)
    changes = {k: v for k, v in (("backend", args.backend), ("prefix", args.prefix),
                                 ("api", args.api), ("token_file", args.token_file))
               if v is not None}
    if args.token_file:
        changes["token_file"] = str(Path(args.token_file).expanduser().resolve())
    ctx = msgspec.structs.replace(ctx, **changes)
    _check_context(args.name, ctx)
    created = args.name not in config.contexts
    config.contexts[args.name] = ctx
    if args.use or not config.current_context:
        config.current_context = args.name
    save(config)
    print(f"context {args.name} {'created' if created else 'changed'}"
          + (" (current)" if config.current_context == args.name else ""))
    return 0


def _set_datacenter(config: ConfigFile, ctx: Context, args: argparse.Namespace) -> int:
    """``sked config set-datacenter|delete-datacenter CONTEXT DATACENTER``."""
    datacenters = dict(ctx.datacenters)
    if args.config_command == "delete-datacenter":
        if args.name not in config.contexts or datacenters.pop(args.datacenter, None) is None:
            raise NotFound(f"datacenter {args.datacenter!r} not found in context "
                           f"{args.name!r} of {config_path()}")
        verb = "deleted"
    else:
        verb = "changed" if args.datacenter in datacenters else "added"
        datacenters[args.datacenter] = DatacenterEntry(backend=args.backend,
                                                       prefix=args.prefix or "")
    ctx = msgspec.structs.replace(ctx, datacenters=datacenters)
    _check_context(args.name, ctx)
    config.contexts[args.name] = ctx
    if not config.current_context:
        config.current_context = args.name
    save(config)
    print(f"datacenter {args.datacenter} of context {args.name} {verb}")
    return 0
