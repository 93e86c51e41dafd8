"""``sked serve``, ``sked env create|ls|get|update|delete``, ``sked deploy`` and
``sked deployments``: daemon-per-host environments (see ``docs/environments.md``).

The ``env``/``deploy``/``deployments`` commands work on the store directly, through the
same :class:`~skedlib.environments.Environments` the REST API uses, so they need no
running server. ``sked serve`` runs the REST API.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from skedlib.api import (
    DEFAULT_LISTEN,
    ApiServer,
    is_loopback,
    parse_listen,
    read_only_token_for_serve,
    tls_context,
    token_for_serve,
)
from skedlib.cli import datacenters
from skedlib.cli.args import positive_number
from skedlib.cli.logs import add_log_options, configure_logging
from skedlib.cli.output import Listing, add_output_options, columns, render, show
from skedlib.client import Client
from skedlib.environments import (
    Deployment,
    EnvironmentCreate,
    Environments,
    EnvironmentUpdate,
    EnvironmentView,
)
from skedlib.errors import SkedError, ValidationError
from skedlib.federation import DEFAULT_TIMEOUT

__all__ = ["add_parsers", "cmd_deploy", "cmd_deployments", "cmd_env", "cmd_serve"]

ENV_HEADERS = ["name", "cluster", "task", "constraints", "max parallel", "health",
               "deployment", "status"]
DEPLOYMENT_HEADERS = ["id", "task", "status", "hosts", "started", "duration", "message"]


class DeploymentFailed(SkedError):
    """``sked deploy --wait``: the deployment failed or did not finish in time."""


def _task(text: str) -> tuple[str, int]:
    name, sep, version = text.rpartition(":")
    if not sep or not name or not version.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME:VERSION, got {text!r}")
    return name, int(version)


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``serve``, ``env``, ``deploy`` and ``deployments`` to ``sked``'s subcommands."""
    p = sub.add_parser("serve", parents=[common],
                       help="run the REST API (services, tasks, hosts, events, "
                            "environments, batch jobs; docs/api.md) and the web console")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address to listen on (default {DEFAULT_LISTEN}); a non-loopback "
                        "address needs --public")
    p.add_argument("--public", action="store_true",
                   help="allow listening beyond loopback (needs $SKED_API_TOKEN or "
                        "--token-file)")
    p.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                   help="the bearer token every request but ping needs, read from FILE "
                        "(mode 0600); default: $SKED_API_TOKEN, else a file made on first "
                        "start beside a SQLite store or in ~/.config/skedlib/api-token")
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)  # refused: see cmd_serve
    p.add_argument("--read-token-file", type=Path, default=None, metavar="FILE",
                   help="a second token, read from FILE (mode 0600), that may only read "
                        "(GET: dashboards, monitoring); default: $SKED_API_READ_TOKEN, "
                        "else none")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also accept requests whose Host header is NAME (a DNS name of "
                        "this machine or of a reverse proxy); repeatable")
    p.add_argument("--tls-cert", type=Path, default=None, metavar="FILE",
                   help="serve HTTPS with this PEM certificate (chain); needs --tls-key")
    p.add_argument("--tls-key", type=Path, default=None, metavar="FILE",
                   help="the certificate's PEM private key (mode 0600)")
    p.add_argument("--track-every", type=positive_number, default=1.0, metavar="SECONDS",
                   help="how often in-progress deployments are brought up to date "
                        "(default 1)")
    datacenters.add_serve_options(p)
    add_log_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("env", parents=[common],
                       help="daemon-per-host environments: create, ls, get, update, delete")
    esub = p.add_subparsers(dest="env_command", required=True, metavar="COMMAND")
    c = esub.add_parser("create", parents=[common],
                        help="create an environment (nothing runs until `sked deploy`)")
    c.add_argument("name", help="the new environment's name")
    c.add_argument("--cluster", required=True, help="the cluster whose hosts it runs on")
    c.add_argument("--task", type=_task, required=True, metavar="NAME:VERSION",
                   help="the task definition to run on every eligible host")
    _spec_options(c)
    c.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                   metavar="FORMAT", help="table (default: one line), json or yaml: the "
                                          "environment")
    c = esub.add_parser("ls", parents=[common], help="list environments")
    c.add_argument("--cluster", default=None, help="only this cluster's")
    add_output_options(c)
    c = esub.add_parser("get", parents=[common], help="one environment")
    c.add_argument("name", help="the environment")
    add_output_options(c, default="yaml")
    c = esub.add_parser("update", parents=[common],
                        help="change an environment (takes effect with the next deploy)")
    c.add_argument("name", help="the environment")
    c.add_argument("--task", type=_task, default=None, metavar="NAME:VERSION",
                   help="run this task definition from the next deploy on")
    _spec_options(c)
    c.add_argument("--no-constraints", action="store_true", help="remove every constraint")
    c.add_argument("--deploy", action="store_true", help="then deploy it")
    _wait_options(c)
    c.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                   metavar="FORMAT", help="table (default: one line), json or yaml: the "
                                          "environment")
    c = esub.add_parser("delete", parents=[common],
                        help="delete an environment; its tasks stop unless --keep-tasks")
    c.add_argument("name", help="the environment")
    c.add_argument("--keep-tasks", action="store_true",
                   help="keep the tasks running (the service stays, detached)")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("deploy", parents=[common],
                       help="deploy an environment on every eligible host")
    p.add_argument("name", metavar="ENV", help="the environment")
    p.add_argument("--token", default=None,
                   help="the deployment token (default: the environment's current one; "
                        "pass it to make a retried command deploy at most once)")
    p.add_argument("--rollback", action="store_true",
                   help="deploy the previous completed deployment's task definition")
    _wait_options(p)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("deployments", parents=[common],
                       help="an environment's deployments, newest first")
    p.add_argument("name", metavar="ENV", help="the environment")
    p.add_argument("id", nargs="?", help="one deployment (shown as YAML unless -o says)")
    add_output_options(p)
    p.set_defaults(func=cmd_deployments)


def _spec_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--constraint", action="append", default=None, metavar="EXPR",
                   help="host constraint, e.g. 'attribute:zone == a'; repeatable")
    p.add_argument("--max-parallel", type=int, default=None, metavar="N",
                   help="hosts replaced at once when the version changes (default 1)")
    p.add_argument("--deadline", type=positive_number, default=None, metavar="SECONDS",
                   help="a deployment not completed after this long fails (default 600)")


def _wait_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true",
                   help="wait until the deployment completed (exit 1 if it failed)")
    p.add_argument("--timeout", type=positive_number, default=None, metavar="SECONDS",
                   help="with --wait: give up after this long (default: the deadline)")


# -- rendering ------------------------------------------------------------------------------
def _env_row(e: EnvironmentView) -> list[Any]:
    return [e.name, e.cluster, f"{e.task_name}:{e.task_version}", e.constraints,
            e.max_parallel, e.health, e.current_deployment, e.deployment_status]


def _env_listing(items: list[EnvironmentView], empty: str,
                 single: bool = False) -> Listing[EnvironmentView]:
    return Listing("environment", items, columns(ENV_HEADERS, _env_row, states=("status",)),
                   name=lambda e: e.name, single=single, empty=empty)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _dep_row(d: Deployment) -> list[Any]:
    end = d.ended_at or time.time()
    status = d.status + (f" (rollback to {d.rollback_to})" if d.rollback_to else "")
    return [d.id, f"{d.task_name}:{d.task_version}", status,
            f"{d.updated_hosts}/{d.hosts}", _when(d.started_at),
            f"{max(0.0, end - d.started_at):.1f}s", d.message]


def _dep_line(d: Deployment) -> str:
    line = (f"deployment {d.id} of {d.environment}: {d.task_name}:{d.task_version} "
            f"{d.status}, {d.updated_hosts}/{d.hosts} host(s) updated")
    if d.message:
        line += f": {d.message}"
    return line


# -- commands -------------------------------------------------------------------------------
T = TypeVar("T")


def _convert(data: dict[str, Any], type_: type[T], label: str) -> T:
    """The request Struct for ``data``, checked as the API checks a request body."""
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        message, _, at = str(exc).rpartition(" - at `$.")
        raise ValidationError(f"{label}: field {at.rstrip('`')}: {message}" if message
                              else f"{label}: {exc}") from None


def cmd_serve(client: Client, args: argparse.Namespace) -> int:
    """``sked serve [--listen HOST:PORT] [--public] [--token-file FILE] [--allowed-host
    NAME] [--tls-cert FILE --tls-key FILE]``: until SIGINT/SIGTERM."""
    if args.token is not None:
        raise ValidationError("--token: a secret on the command line is visible to every "
                              "local user (ps); set $SKED_API_TOKEN or --token-file FILE")
    host, port = parse_listen(args.listen)
    if not args.public and not is_loopback(host):
        raise ValidationError(f"--listen {args.listen}: not a loopback address; pass "
                              "--public to listen beyond this machine (with "
                              "$SKED_API_TOKEN or --token-file)")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValidationError("--tls-cert and --tls-key: give both or neither")
    tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    token, source = token_for_serve(client.backend, args.token_file,
                                    public=args.public or not is_loopback(host))
    read_token, read_source = read_only_token_for_serve(args.read_token_file)
    if read_token == token:
        raise ValidationError("--read-token-file: the read-only token is the same as the "
                              "full token; give it a token of its own")
    dcs = datacenters.serve_datacenters(args)
    configure_logging(args.log_level, log_format=args.log_format)
    try:
        server = ApiServer(client, host, port, token=token, read_token=read_token,
                           allowed_hosts=tuple(args.allowed_host), tls=tls,
                           track_every=args.track_every, datacenters=dcs,
                           dc_timeout=getattr(args, "dc_timeout", DEFAULT_TIMEOUT))
    except OSError as exc:
        raise SkedError(f"--listen {args.listen}: cannot listen there: "
                        f"{exc.strerror or exc}") from None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) \
        if threading.current_thread() is threading.main_thread() else None
    server.start()
    print(f"sked serve: listening on {server.url} (OpenAPI document: {server.url}/openapi.json"
          f"; bearer token required, from {source}"
          + (f"; read-only token from {read_source}" if read_token else "") + ")", flush=True)
    if dcs:
        print(f"sked serve: reading datacenters {', '.join(dc.name for dc in dcs)} for "
              f"{server.url}/all-datacenters/", flush=True)
    root = server.url.removesuffix("/v1")
    print(f"sked serve: web console at {root}/; blox's v1 API at {root}/blox/v1", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def cmd_env(client: Client, args: argparse.Namespace) -> int:
    """``sked env create|ls|get|update|delete``."""
    envs = Environments(client.store)
    command = args.env_command
    if command == "create":
        task_name, task_version = args.task
        spec: dict[str, Any] = {"constraints": args.constraint or [],
                                "max_parallel": args.max_parallel,
                                "deployment_deadline": args.deadline}
        view = envs.create(_convert(
            {"name": args.name, "cluster": args.cluster, "task_name": task_name,
             "task_version": task_version, **{k: v for k, v in spec.items() if v is not None}},
            EnvironmentCreate, f'environment "{args.name}"'))
        print(f"environment {view.name} created (deploy it: sked deploy {view.name})")
        if args.output != "table":
            print(render([view], args.output, ENV_HEADERS, _env_row, single=True))
        return 0
    if command == "ls":
        def listing() -> Listing[EnvironmentView]:
            items: list[EnvironmentView] = []
            token = ""
            while True:
                page = envs.list(cluster=args.cluster, next_token=token)
                items += page.items
                token = page.next_token
                if not token:
                    break
            return _env_listing(items, "no environments")
        return show(client, args, listing)
    if command == "get":
        return show(client, args, lambda: _env_listing([envs.get(args.name)], "",
                                                       single=True))
    if command == "update":
        task_name, task_version = args.task or (None, None)
        constraints = [] if args.no_constraints else args.constraint
        view = envs.update(args.name, _convert(
            {"task_name": task_name, "task_version": task_version, "constraints": constraints,
             "max_parallel": args.max_parallel, "deployment_deadline": args.deadline},
            EnvironmentUpdate, f'environment "{args.name}"'))
        print(f"environment {view.name} updated: {view.task_name}:{view.task_version}, "
              f"max parallel {view.max_parallel}"
              + (f", constraints {', '.join(view.constraints)}" if view.constraints else ""))
        if args.output != "table":
            print(render([view], args.output, ENV_HEADERS, _env_row, single=True))
        if args.deploy:
            return _deploy(envs, args.name, view.deployment_token, False, args.wait,
                           args.timeout)
        return 0
    deleted = envs.delete(args.name, keep_tasks=args.keep_tasks)
    print(deleted.message)
    return 0


def cmd_deploy(client: Client, args: argparse.Namespace) -> int:
    """``sked deploy ENV [--token T] [--rollback] [--wait [--timeout S]]``."""
    envs = Environments(client.store)
    token = args.token
    if token is None:
        token = envs.get(args.name).deployment_token
    return _deploy(envs, args.name, token, args.rollback, args.wait, args.timeout)


def _deploy(envs: Environments, name: str, token: str, rollback: bool, wait: bool,
            timeout: float | None) -> int:
    dep = envs.deploy(name, token, rollback=rollback)
    what = f"rollback to deployment {dep.rollback_to}'s " if dep.rollback_to else ""
    print(f"deployment {dep.id} of {name} started: {what}{dep.task_name}:{dep.task_version}"
          + (f" (was version {dep.previous_version})" if dep.previous_version is not None
             else ""), flush=True)
    if not wait:
        return 0
    deadline = time.monotonic() + (timeout or dep.deadline + 5)
    last = ""
    while True:
        dep = envs.deployment(name, dep.id)
        line = _dep_line(dep)
        if line != last:
            print(line, flush=True)
            last = line
        if dep.status == "completed":
            return 0
        if dep.status == "failed":
            hosts = "; ".join(f"{f.host}: {f.reason}" for f in dep.failed_hosts)
            raise DeploymentFailed(f"deployment {dep.id} of {name} failed: {dep.message}"
                                   + (f" (failed hosts: {hosts})" if hosts else ""))
        if time.monotonic() >= deadline:
            raise DeploymentFailed(f"deployment {dep.id} of {name}: still {dep.status} after "
                                   f"the timeout: {dep.message}")
        time.sleep(0.5)


def cmd_deployments(client: Client, args: argparse.Namespace) -> int:
    """``sked deployments ENV [ID] [-o FORMAT] [-w]``."""
    envs = Environments(client.store)
    if args.id and args.output == "table":
        args.output = "yaml"  # one deployment: all of it

    def listing() -> Listing[Deployment]:
        if args.id:
            items = [envs.deployment(args.name, args.id)]
        else:
            items = []
            token = ""
            while True:
                page = envs.deployments(args.name, next_token=token)
                items += page.items
                token = page.next_token
                if not token:
                    break
        return Listing("deployment", items, columns(DEPLOYMENT_HEADERS, _dep_row,
                                                    states=("status",)),
                       name=lambda d: d.id, single=bool(args.id),
                       empty=f"environment {args.name}: no deployments yet")
    return show(client, args, listing)
