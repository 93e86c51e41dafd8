"""Encoding and decoding: JSON for stored objects, YAML for manifests.

Encoders and decoders are built once per type and reused. Decoding never lets a raw
msgspec or YAML error escape: every failure is a :class:`~skedlib.errors.ValidationError`
whose one-line message names where the bad data came from and the field path.

Manifests (``sked apply -f``) are YAML documents with top-level lists ``clusters``,
``services`` and ``task_definitions``, each item in the JSON shape of the objects.
Beyond JSON, a manifest may write durations as strings (``grace_period: 60s``) and
``null`` for "use the default". Unknown fields are reported as warnings and ignored;
wrong types are errors.

The original program's shapes (Sked / consul-scheduler, docs/coming-from-sked.md) are
read here too, in one place (:func:`_compat`, applied by manifests and by :func:`decode`
when a record does not decode as written): ``tasks:`` as the manifest section of task
definitions, Go duration strings (``"1m0s"``) wherever a duration is stored, ``null``
for a list, a task's ``cluster`` as a bare name, and the original Host record's field
names (``reserved_ports``, ``tags``, ``base_resources``, ``observed_resources`` …).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

from skedlib import keys as sk
from skedlib import models as sm
from skedlib.durations import parse_duration
from skedlib.errors import ValidationError, one_line
from skedlib.keys import Key, Keyspace
from skedlib.models import Cluster, Container, Manifest, Service, TaskDefinition
from skedlib.store.base import KeyValue

__all__ = [
    "MAX_MANIFEST_BYTES",
    "MAX_MANIFEST_OBJECTS",
    "InvalidRecord",
    "ManifestDocument",
    "check_record",
    "convert_blob_data",
    "decode",
    "decode_listing",
    "decode_record",
    "encode",
    "find_invalid_records",
    "load_manifest",
    "object_label",
    "parse_manifest",
    "record_type",
    "to_builtins",
    "to_yaml",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()

#: the manifest's top-level sections and the type of their items
SECTIONS: dict[str, type[msgspec.Struct]] = {
    "clusters": Cluster,
    "services": Service,
    "task_definitions": TaskDefinition,
}
#: other names of sections: Sked's ``ApplyConfig`` read task definitions from ``tasks``
SECTION_ALIASES = {"tasks": "task_definitions"}


def encode(obj: Any) -> bytes:
    """JSON bytes of a Struct (or any msgspec-encodable value)."""
    return _encoder.encode(obj)


@functools.cache
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


def decode(data: bytes | str, type_: type[T], *, where: str = "") -> T:
    """Decode JSON ``data`` as ``type_``; raises :class:`ValidationError` naming ``where``.

    JSON in the original program's shape (see the module docstring) decodes too: when
    the strict decoding fails (or, for a Host, when the data holds one of Sked's field
    names), the data is read again through :func:`_compat`; when that fails as well,
    the error reported is the one of that reading (it names the field that is wrong
    once Sked's spellings are accounted for)."""
    strict = _forbids_unknown(type_)
    markers = None if strict else _COMPAT_MARKERS.get(type_)
    if markers and any(m in (data if isinstance(data, bytes) else data.encode())
                       for m in markers):
        # fields of the original's shape that skedlib's would silently ignore
        compat = _decode_compat(data, type_)
        if compat is not None and not isinstance(compat, str):
            return compat
    try:
        result: T = _decoder(type_).decode(data)  # type: ignore[arg-type]
    except msgspec.ValidationError as exc:
        if strict:  # a type that refuses unknown fields is never read loosely
            raise ValidationError(f"{where or type_.__name__}: {_field_message(exc)}") from None
        compat = _decode_compat(data, type_)
        if isinstance(compat, str):  # what is wrong once the original's shapes are read
            raise ValidationError(f"{where or type_.__name__}: {compat}") from None
        if compat is not None:
            return compat
        raise ValidationError(f"{where or type_.__name__}: {_field_message(exc)}") from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"{where or type_.__name__}: malformed JSON: {exc}") from None
    return result


def _forbids_unknown(type_: type[Any]) -> bool:
    """True for a Struct declared with ``forbid_unknown_fields`` (a request body, a
    config file): such input is decoded strictly, never through the original's shapes."""
    config = getattr(type_, "__struct_config__", None)
    return bool(getattr(config, "forbid_unknown_fields", False))


def _decode_compat(data: bytes | str, type_: type[T]) -> T | str | None:
    """``data`` decoded through the original program's shapes; else what is wrong with
    it read that way (a message), or None when it is not JSON (the slow path: only for
    records the fast one refused or that hold the original's field names)."""
    try:
        raw = msgspec.json.decode(data)
        normalized = _normalize(raw, mi.type_info(type_), "", lambda _w: None)
        converted: T = msgspec.convert(normalized, type_, strict=True)
    except msgspec.ValidationError as exc:
        return _field_message(exc)
    except _FieldError as exc:
        return f"field {exc.path}: {exc.message}"
    except msgspec.DecodeError:
        return None
    return converted


def convert_blob_data(blob: Any, type_: type[T]) -> T:
    """An executor blob (a container's ``executor``) as its config Struct ``type_``; a
    blob in the original's shapes (``null`` for a list, Go duration strings) converts
    too. Raises :class:`msgspec.ValidationError` (the strict conversion's) otherwise."""
    try:
        result: T = msgspec.convert(blob, type_)
    except msgspec.ValidationError:
        try:
            normalized = _normalize(blob, mi.type_info(type_), "", lambda _w: None)
            return msgspec.convert(normalized, type_)
        except (msgspec.ValidationError, _FieldError):
            pass
        raise
    return result


# -- the original program's shapes -------------------------------------------------------
#: Sked's Host record field → skedlib's (None: accepted and not kept; skedlib computes it)
_HOST_FIELDS: dict[str, str | None] = {
    "reserved_ports": "ports", "tags": "attributes", "base_resources": "total",
    "observed_resources": "observed", "calculated_resources": None, "health_check": None,
    "mem_use_percent": None,
}
#: records whose original shape decodes without error but loses data (renamed fields):
#: their JSON is read through _compat when it holds one of these
_COMPAT_MARKERS: dict[type, tuple[bytes, ...]] = {
    sm.Host: tuple(f'"{k}"'.encode() for k in ("reserved_ports", "tags", "base_resources",
                                                "observed_resources", "disk_space")),
}
#: Sked's Resources field → skedlib's
_RESOURCE_FIELDS: dict[str, str | None] = {"disk_space": "disk", "mem_use_percent": None}


def _renamed(value: dict[str, Any], names: dict[str, str | None]) -> dict[str, Any]:
    """``value`` with the original's field names replaced (skedlib's own name wins when
    both are present)."""
    out = {k: v for k, v in value.items() if k not in names}
    for old, new in names.items():
        if old in value and new is not None and new not in value:
            out[new] = value[old]
    return out


def _compat(cls: type[Any], value: dict[str, Any]) -> dict[str, Any]:
    """One object (a mapping, to be converted to ``cls``) with the original program's
    shapes rewritten to skedlib's: the one place that knows them."""
    if cls is sm.Task and isinstance(value.get("cluster"), str):
        # Sked's Task.cluster is the cluster's name; the record carries the cluster
        return {**value, "cluster": {"name": value["cluster"]}}
    if cls is sm.Host:
        out = _renamed(value, _HOST_FIELDS)
        # the oldest Host record: memory, cpu_units and disk_space at the top level
        flat = {k: out.pop(k) for k in ("memory", "cpu_units", "disk_space") if k in out}
        if flat and "total" not in out:
            out["total"] = flat
        return out
    if cls is sm.Resources:
        return _renamed(value, _RESOURCE_FIELDS)
    return value

# -- stored records: decode or quarantine ------------------------------------------------
# Every reader of the keyspace (the scheduler's snapshot and its watch-fed cache, the
# agent, the CLI's views, the client's listings, the API) decodes stored records here, so
# that a record written by hand or by a buggy plugin is handled the same way everywhere:
# skipped with one warning naming its key, never fatal, and listed by `sked doctor`.

#: the record type stored under each kind of key (the keys whose id can be checked)
_RECORD_TYPES: dict[type, type[Any]] = {
    sk.ClusterKey: Cluster, sk.ServiceKey: Service, sk.TaskDefinitionKey: TaskDefinition,
    sk.HostConfigKey: sm.HostConfig, sk.TaskKey: sm.Task, sk.HealthKey: sm.TaskHealth,
    sk.AgentKey: sm.Host, sk.RolloutKey: sm.RolloutHistory,
    sk.ServiceStatusKey: sm.ServiceStatus,
}


class InvalidRecord(msgspec.Struct, frozen=True):
    """A stored record that readers skip: it does not decode, or its id does not match
    its key. ``key`` is the full key, ``reason`` one line."""

    key: str
    reason: str
    revision: int = 0


def record_type(key: Key) -> type[Any] | None:
    """The record type stored under a parsed key, or None (markers, locks, host index)."""
    return _RECORD_TYPES.get(type(key))


def _identity(key: Key, obj: Any) -> tuple[object, object] | None:
    """(what the key says, what the record says) for keys that name their record."""
    match key:
        case sk.TaskKey(task_id=task_id) if isinstance(obj, sm.Task):
            return task_id, obj.id
        case sk.HealthKey(task_id=task_id) if isinstance(obj, sm.TaskHealth):
            return task_id, obj.task_id
        case sk.AgentKey(host=name) if isinstance(obj, sm.Host):
            return name, obj.name
        case (sk.ClusterKey(name=name) | sk.ServiceKey(name=name)
              | sk.HostConfigKey(name=name)) if isinstance(obj, Cluster | Service | sm.HostConfig):
            return name, obj.name
        case sk.TaskDefinitionKey(name=name, version=version) \
                if isinstance(obj, TaskDefinition):
            return f"{name}:{version}", f"{obj.name}:{obj.version}"
        case sk.RolloutKey(cluster=cluster, service=service) \
                if isinstance(obj, sm.RolloutHistory):
            return f"{cluster}/{service}", f"{obj.cluster}/{obj.service}"
    return None


def check_record(kv: KeyValue, type_: type[T], key: Key | None = None) -> T:
    """Decode the stored record ``kv`` as ``type_`` and, when ``key`` (the parsed key) is
    given, check that the record's id is the one its key names.

    Raises :class:`ValidationError` whose one-line message starts with the key."""
    where = one_line(kv.key)
    obj = decode(kv.value, type_, where=where)
    if key is not None:
        ids = _identity(key, obj)
        if ids is not None and ids[0] != ids[1]:
            raise ValidationError(one_line(f"{where}: the record's id {ids[1]!s} does not "
                                           f"match its key ({ids[0]!s})"))
    return obj


class _Warned:
    """The (key, revision) pairs already warned about: one warning per bad version of a
    key, however often it is read (bounded: forgotten wholesale past a limit)."""

    limit = 10_000

    def __init__(self) -> None:
        self._seen: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def first(self, key: str, revision: int) -> bool:
        with self._lock:
            if (key, revision) in self._seen:
                return False
            if len(self._seen) >= self.limit:
                self._seen.clear()
            self._seen.add((key, revision))
            return True


_warned = _Warned()


def quarantine(kv: KeyValue, exc: ValidationError) -> None:
    """Report a record that readers skip: one warning per key and revision (logger
    ``skedlib.codecs``), pointing at ``sked doctor``."""
    if _warned.first(kv.key, kv.revision):
        log.warning("ignoring a record that does not decode or does not match its key: %s "
                    "(sked doctor lists such records)",
                    one_line(str(exc)))


def decode_record(kv: KeyValue, type_: type[T], key: Key | None = None, *,
                  on_bad: Callable[[KeyValue, ValidationError], None] | None = None
                  ) -> T | None:
    """Decode or quarantine: the record (see :func:`check_record`), or None after one
    warning (:func:`quarantine`) when it does not decode or its id does not match
    ``key``. ``on_bad`` is told about every skipped record too (e.g. to count it)."""
    try:
        return check_record(kv, type_, key)
    except ValidationError as exc:
        quarantine(kv, exc)
        if on_bad is not None:
            on_bad(kv, exc)
        return None


def _record_prefixes(keys: Keyspace) -> tuple[str, ...]:
    return (keys.clusters, keys.services, keys.task_definitions, keys.host_configs,
            keys.tasks, keys.health, keys.agents)


def find_invalid_records(items: Iterable[KeyValue], keys: Keyspace) -> list[InvalidRecord]:
    """Every record in ``items`` (a listing) that readers skip, by key; keys that are
    not records of the schema (markers, locks, foreign keys) are not looked at."""
    out = []
    for kv in items:
        try:
            parsed = keys.parse(kv.key)
        except ValidationError as exc:
            if kv.key.startswith(_record_prefixes(keys)):  # a record's place, a bad name
                out.append(InvalidRecord(kv.key, one_line(f"{kv.key}: not a valid key: "
                                                          f"{exc}"), kv.revision))
            continue
        type_ = record_type(parsed)
        if type_ is None:
            continue
        try:
            check_record(kv, type_, parsed)
        except ValidationError as exc:
            out.append(InvalidRecord(kv.key, str(exc), kv.revision))
    return sorted(out, key=lambda r: r.key)


def to_builtins(obj: Any) -> Any:
    """Dicts, lists and scalars for ``obj`` (for YAML or table output)."""
    return msgspec.to_builtins(obj)


def to_yaml(obj: Any) -> str:
    """Block-style YAML of ``obj``."""
    import yaml

    return yaml.safe_dump(to_builtins(obj), sort_keys=False, allow_unicode=True)


def _field_message(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's "Expected `int`, got `str` - at `$.desired`" into "field desired: …"."""
    text = str(exc)
    message, sep, at = text.rpartition(" - at `")
    if not sep:
        return text
    path = at.rstrip("`").removeprefix("$").lstrip(".")
    return f"field {path or '(root)'}: {message}" if path else message


class ManifestDocument(msgspec.Struct, frozen=True):
    """A parsed manifest, the file it came from, and warnings about ignored fields."""

    manifest: Manifest
    source: str
    warnings: tuple[str, ...] = ()


class _FieldError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _normalize(value: Any, t: mi.Type, path: str, warn: Callable[[str], None]) -> Any:
    """Walk YAML data along its type: durations to ns, nulls to defaults, unknown keys."""
    if isinstance(t, mi.Metadata):
        if (t.extra and t.extra.get("duration") and isinstance(value, str | float | int)
                and not isinstance(value, bool)):
            try:
                return parse_duration(value)
            except ValidationError as exc:
                raise _FieldError(path, str(exc)) from None
        return _normalize(value, t.type, path, warn)
    if isinstance(t, mi.StructType) and isinstance(value, dict):
        value = _compat(t.cls, value)
        fields = {f.encode_name: f for f in t.fields}
        out = {}
        for key, item in value.items():
            field = fields.get(key)
            if field is None:
                warn(f"field {path + '.' if path else ''}{key}: unknown field, ignored")
                continue
            if item is None and not _nullable(field.type):
                continue  # null means "the default"
            out[key] = _normalize(item, field.type, f"{path + '.' if path else ''}{key}", warn)
        if t.cls is Container:
            _warn_executor_fields(value, path, warn)
        return out
    if isinstance(t, mi.ListType) and isinstance(value, list):
        return [_normalize(v, t.item_type, f"{path}[{i}]", warn) for i, v in enumerate(value)]
    if isinstance(t, mi.DictType) and isinstance(value, dict):
        return {k: _normalize(v, t.value_type, f"{path}.{k}", warn) for k, v in value.items()}
    if isinstance(t, mi.UnionType) and value is not None:
        inner = [u for u in t.types if not isinstance(u, mi.NoneType)]
        if len(inner) == 1:
            return _normalize(value, inner[0], path, warn)
    return value


def _warn_executor_fields(container: dict[str, Any], path: str,
                          warn: Callable[[str], None]) -> None:
    """Warn about unknown fields in the executor blob of a type whose executor declares
    its config Struct (``skedlib_executor_configs``); its values are kept as written."""
    blob = container.get("executor")
    if not isinstance(blob, dict):
        return
    # imported here: codecs sit below the plugin registry (which imports the stores)
    from skedlib.plugins import get_registry

    config = get_registry().executor_config(str(container.get("type")))
    if config is not None:
        _normalize(blob, mi.type_info(config), f"{path + '.' if path else ''}executor", warn)


def _nullable(t: mi.Type) -> bool:
    if isinstance(t, mi.Metadata):
        return _nullable(t.type)
    return isinstance(t, mi.NoneType | mi.AnyType) or (
        isinstance(t, mi.UnionType) and any(isinstance(u, mi.NoneType) for u in t.types))


def object_label(section: str, index: int, name: object = None) -> str:
    """How messages name a manifest object: ``services[2] "web"`` (``services[2]`` when
    it has no string name). Unprintable characters in the name are escaped, so the
    label stays one line."""
    if isinstance(name, str):
        return f'{section}[{index}] "{one_line(name)}"'
    return f"{section}[{index}]"


def _label(section: str, index: int, item: Any) -> str:
    return object_label(section, index, item.get("name") if isinstance(item, dict) else None)


def _surrogate_path(value: Any, path: str) -> str | None:
    """The path of the first string (or mapping key) in ``value`` holding an unpaired
    surrogate, which cannot be stored as UTF-8; None when there is none."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(root)"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            found = _surrogate_path(k, sub) or _surrogate_path(v, sub)
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate_path(v, f"{path}[{i}]")
            if found:
                return found
    return None


def convert_object(item: Any, type_: type[T], label: str, warn: Callable[[str], None]) -> T:
    """Convert one manifest object (YAML data) into ``type_``, or raise ValidationError."""
    if not isinstance(item, dict):
        raise ValidationError(f"{label}: expected a mapping, got {type(item).__name__}")
    bad_text = _surrogate_path(item, "")
    if bad_text is not None:
        raise ValidationError(one_line(f"{label}: field {bad_text}: text with an unpaired "
                                       "surrogate (\\ud800-\\udfff) cannot be stored"))
    try:
        data = _normalize(item, mi.type_info(type_), "", lambda w: warn(f"{label}: {w}"))
        result: T = msgspec.convert(data, type_, strict=True)
    except _FieldError as exc:
        raise ValidationError(f"{label}: field {exc.path}: {exc.message}") from None
    except msgspec.ValidationError as exc:
        raise ValidationError(f"{label}: {_field_message(exc)}") from None
    return result


@functools.cache
def _strict_loader() -> type[Any]:
    """YAML's safe loader, refusing a mapping that repeats a key (plain YAML lets the
    last one win silently, so a typo'd copy of ``desired:`` would override the first).
    Made at the first manifest read: yaml is imported only by what reads YAML."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False
                              ) -> dict[Any, Any]:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.setdefault(key, line)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first != line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {first})",
                        key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


MAX_MANIFEST_BYTES = 16 * 1024 * 1024
"""The largest manifest :func:`parse_manifest` reads (bytes of UTF-8)."""
MAX_MANIFEST_OBJECTS = 10_000
"""The most objects (clusters, services and task definitions together) in a manifest."""


def parse_manifest(text: str, source: str = "<manifest>", *,
                   max_bytes: int = MAX_MANIFEST_BYTES,
                   max_objects: int = MAX_MANIFEST_OBJECTS) -> ManifestDocument:
    """Parse manifest YAML; errors are one line starting with ``source``.

    Strict: a repeated key in a mapping, a manifest with no document (empty, or only
    comments), and a document that is not a mapping with at least one of the sections
    are errors. ``tasks`` is read as ``task_definitions`` (Sked's manifests); a file that
    uses both names is an error."""
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ValidationError(f"{source}: manifest larger than {max_bytes} bytes (the "
                              "manifest size limit)")
    import yaml

    try:
        docs = [d for d in yaml.load_all(text, Loader=_strict_loader()) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValidationError(one_line(f"{source}:{where} malformed YAML: {problem}")) from None
    if not docs:
        raise ValidationError(f"{source}: empty manifest (expected a mapping with "
                              f"{', '.join(SECTIONS)})")
    warnings: list[str] = []
    sections: dict[str, list[Any]] = {name: [] for name in SECTIONS}
    used: set[str] = set()
    for doc in docs:
        if not isinstance(doc, dict):
            raise ValidationError(f"{source}: expected a mapping with "
                                  f"{', '.join(SECTIONS)}; got {type(doc).__name__}")
        if not any(key in SECTIONS or key in SECTION_ALIASES for key in doc):
            raise ValidationError(one_line(
                f"{source}: not a manifest: none of {', '.join(SECTIONS)} in a document "
                f"with keys {', '.join(map(str, list(doc)[:5]))}"))
        for name, items in doc.items():
            key = SECTION_ALIASES.get(name, name)
            if key not in SECTIONS:
                warnings.append(f"{source}: unknown top-level key {name!r}, ignored")
                continue
            used.add(name)
            both = [n for n, k in [*SECTION_ALIASES.items(), (key, key)]
                    if k == key and n in used]
            if len(both) > 1:
                raise ValidationError(one_line(
                    f"{source}: both {' and '.join(repr(n) for n in sorted(both))} list "
                    f"{key.replace('_', ' ')} (tasks is Sked's name for task_definitions); "
                    "use one of them"))
            if items is None:
                continue
            if not isinstance(items, list):
                raise ValidationError(f"{source}: {key}: expected a list, got "
                                      f"{type(items).__name__}")
            sections[key].extend(items)
    count = sum(len(items) for items in sections.values())
    if count > max_objects:
        raise ValidationError(f"{source}: {count} objects, more than {max_objects} (the "
                              "manifest object limit)")
    converted: dict[str, list[Any]] = {}
    for key, items in sections.items():
        converted[key] = []
        for i, item in enumerate(items):
            label = _label(key, i, item)
            try:
                converted[key].append(convert_object(item, SECTIONS[key], label,
                                                     warnings.append))
            except ValidationError as exc:
                raise ValidationError(one_line(f"{source}: {exc}")) from None
    manifest = Manifest(clusters=converted["clusters"], services=converted["services"],
                        task_definitions=converted["task_definitions"])
    warnings = [one_line(w if w.startswith(source) else f"{source}: {w}") for w in warnings]
    return ManifestDocument(manifest, source, tuple(warnings))


def load_manifest(path: str | Path) -> ManifestDocument:
    """Read and parse a manifest file (``-`` is not accepted here; read stdin yourself)."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_MANIFEST_BYTES:  # refused before it is read
            raise ValidationError(f"{p}: manifest larger than {MAX_MANIFEST_BYTES} bytes "
                                  "(the manifest size limit)")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{p}: cannot read: {exc}") from None
    return parse_manifest(text, str(p))


def decode_listing(items: Iterable[KeyValue], type_: type[T], keys: Keyspace) -> list[T]:
    """Decode or quarantine every record of a listing (``Client.services()`` …): a key
    that is not one of the schema's (a name with NUL, garbage) or a record that does not
    decode or match its key is skipped with one warning (:func:`quarantine`)."""
    out = []
    for kv in items:
        try:
            parsed = keys.parse(kv.key)
        except ValidationError as exc:
            quarantine(kv, ValidationError(one_line(f"{kv.key}: not a valid key: {exc}")))
            continue
        obj = decode_record(kv, type_, parsed)
        if obj is not None:
            out.append(obj)
    return out
