"""``sked schema [KIND]``: JSON Schema of the stored objects, for other languages.

A scheduler (or agent, or dashboard) written in another language reads and writes the
same JSON documents under the same keys; this prints what those documents look like,
generated from the msgspec Structs themselves so it cannot drift from the code.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from skedlib.errors import ValidationError
from skedlib.models import (
    Cluster,
    Host,
    HostConfig,
    Manifest,
    Service,
    ServiceStatus,
    Task,
    TaskDefinition,
    TaskHealth,
)
from skedlib.scheduling.executable import ExecRequest, ExecResponse

__all__ = ["KINDS", "schema_document"]

JSON_SCHEMA = "https://json-schema.org/draft/2020-12/schema"

#: kind → (type, where it is stored, under the key prefix)
KINDS: dict[str, tuple[type[msgspec.Struct], str]] = {
    "cluster": (Cluster, "config/clusters/<name>"),
    "service": (Service, "config/services/<name>"),
    "task_definition": (TaskDefinition, "config/task_definitions/<name>/<version>"),
    "host_config": (HostConfig, "config/hosts/<name>"),
    "task": (Task, "state/tasks/<task_id> and state/hosts/<host>/<task_id>"),
    "task_health": (TaskHealth, "state/health/<task_id>"),
    "host": (Host, "state/agents/<host> (bound to the agent's lease)"),
    "service_status": (ServiceStatus, "state/services/<cluster>/<service>"),
    "manifest": (Manifest, "(not stored: the YAML/JSON document `sked apply` reads)"),
    "exec_request": (ExecRequest, "(not stored: what skedlib-scheduler writes to an exec "
                                  "scheduler's stdin)"),
    "exec_response": (ExecResponse, "(not stored: what an exec scheduler writes on its "
                                    "stdout)"),
}

_ALIASES = {"clusters": "cluster", "services": "service", "task_definitions": "task_definition",
            "taskdef": "task_definition", "td": "task_definition", "hosts": "host",
            "tasks": "task", "health": "task_health", "status": "service_status",
            "host_configs": "host_config", "request": "exec_request",
            "response": "exec_response"}


def _kind(name: str) -> str:
    kind = _ALIASES.get(name, name).replace("-", "_").lower()
    kind = _ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise ValidationError(f"unknown kind {name!r} (one of {', '.join(KINDS)})")
    return kind


def schema_document(kind: str | None = None) -> dict[str, Any]:
    """The JSON Schema of one kind, or of every kind (as ``$defs``) when None."""
    if kind is not None:
        k = _kind(kind)
        type_, key = KINDS[k]
        doc: dict[str, Any] = {"$schema": JSON_SCHEMA, "x-skedlib-key": key}
        doc.update(msgspec.json.schema(type_))
        return doc
    types = [t for t, _ in KINDS.values()]
    refs, components = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    return {
        "$schema": JSON_SCHEMA,
        "title": "skedlib stored objects",
        "description": "Every object skedlib stores, as JSON. Keys live under a prefix "
                       "(default 'sked/'); 'x-skedlib-keys' says where each kind is stored. "
                       "Durations are integer nanoseconds; fields may be added (always "
                       "with defaults), so readers must ignore unknown fields.",
        "x-skedlib-keys": {k: {"$ref": ref["$ref"], "key": key}
                           for (k, (_, key)), ref in zip(KINDS.items(), refs, strict=True)},
        "$defs": components,
    }


def render_schema(kind: str | None = None) -> str:
    """:func:`schema_document` as indented JSON."""
    return json.dumps(schema_document(kind), indent=2, ensure_ascii=False)
