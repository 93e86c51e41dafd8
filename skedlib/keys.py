"""The storage key schema: declarative tables of key templates.

Every key skedlib writes is one :class:`KeyTemplate`, a pattern such as
``state/hosts/{host}/{task_id}`` paired with the Struct its keys parse to
(:class:`HostTaskKey`); each ``{field}`` is one segment of the key, turned into text
and back by a :class:`Segment` that validates it. A :class:`KeyTable` is a class whose
body lists templates; from that one list it gets its builders (the template's attribute
name: ``keys.host_task("h1", "default-web-2-0")``), its prefixes (``host_task.prefix()``,
``host_task.prefix_for("host")``), :meth:`KeyTable.build` and :meth:`KeyTable.parse`.

:class:`Keyspace` is the table of the core keys (desired, issued and actual state,
scheduler locks), all under a configurable prefix (default ``sked/``). Packages own the
keys of their own objects in a table of their own under the same prefix:
:class:`skedlib.jobs.keys.JobKeyspace` (``jobs/…``) and
:class:`skedlib.environments.keys.EnvironmentKeyspace` (``config/environments/…``,
``state/deployments/…``). docs/concepts.md lists every key for other languages.

Names are validated before any key is built, so a bad name is a clear
:class:`~skedlib.errors.InvalidName`, never a stray key.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, ClassVar, Generic, ParamSpec, TypeVar, cast, overload

import msgspec

from skedlib.errors import InvalidName, ValidationError
from skedlib.models import TaskId

__all__ = [
    "DEFAULT_PREFIX",
    "KEYS_REMEMBERED",
    "MAX_NAME_LENGTH",
    "AgentKey",
    "ClusterKey",
    "HealthKey",
    "HostAllocKey",
    "HostConfigKey",
    "HostTaskKey",
    "Key",
    "KeyTable",
    "KeyTemplate",
    "Keyspace",
    "LockKey",
    "Name",
    "Natural",
    "RolloutKey",
    "Segment",
    "ServiceKey",
    "ServiceStatusKey",
    "TaskDefinitionKey",
    "TaskIdSegment",
    "TaskKey",
    "prefix_end",
    "validate_name",
]

DEFAULT_PREFIX = "sked/"
MAX_NAME_LENGTH = 128
KEYS_REMEMBERED = 1 << 14
"""Keys each builder of a table remembers (the most recently built)."""
#: whitespace, ``/``, control characters (C0, DEL, C1), unpaired surrogates (not UTF-8),
#: and invisible format characters: soft hyphen, zero-width and bidirectional controls,
#: BOM. Whitespace aside, a fixed list rather than the running Python's Unicode tables,
#: so a name means the same to every Python version.
_BAD_CHAR = re.compile(r"[\s/\x00-\x1f\x7f-\x9f\xad\u200b-\u200f\u202a-\u202e"
                       r"\u2060-\u206f\ufeff\ud800-\udfff]")


def validate_name(name: object, what: str = "name", *, allow_dash: bool = True) -> str:
    """Return ``name`` if it can be one segment of a key, else raise :class:`InvalidName`.

    A name is 1 to 128 characters with no ``/``, whitespace, control characters,
    unpaired surrogates or invisible format characters (zero-width, bidirectional
    controls), and is neither ``.`` nor ``..`` nor contains ``..``. ``allow_dash=False``
    also refuses ``-`` (cluster names, so task ids stay parseable).
    """
    if not isinstance(name, str):
        raise InvalidName(f"invalid {what} {name!r}: must be a string")
    if not name:
        raise InvalidName(f"invalid {what} '': must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"invalid {what} {name[:20]!r}…: longer than {MAX_NAME_LENGTH} "
                          "characters")
    bad = _BAD_CHAR.search(name)
    if bad:
        raise InvalidName(f"invalid {what} {name!r}: must not contain {bad.group()!r}")
    if ".." in name or name == ".":
        raise InvalidName(f"invalid {what} {name!r}: must not be '.' or contain '..'")
    if not allow_dash and "-" in name:
        raise InvalidName(f"invalid {what} {name!r}: must not contain '-' (task ids are "
                          "<cluster>-<service>-<version>-<instance>)")
    return name


@functools.lru_cache(maxsize=1 << 16, typed=True)
def _valid_name(name: str, what: str, allow_dash: bool) -> str:
    # Remembered: a few cluster and service names, and the hosts' names, are in most of
    # the keys a process builds. Valid names only (an exception is not cached).
    return validate_name(name, what, allow_dash=allow_dash)


@functools.lru_cache(maxsize=1 << 16)
def _validate_task_id(task_id: str) -> TaskId:
    # Remembered: a plan builds several keys for each task it writes, and checking an id
    # costs more than the rest of building a key. Valid ids only (an exception is not
    # cached); TaskId is frozen, so sharing one is safe.
    try:
        parsed = TaskId.parse(task_id)
    except ValueError as exc:
        raise InvalidName(f"invalid task id {task_id!r}: expected "
                          "<cluster>-<service>-<version>-<instance>") from exc
    _valid_name(parsed.cluster, "cluster name", False)
    _valid_name(parsed.service, "service name", True)
    # the id is its valid names and two decimal numbers joined by '-': it holds no bad
    # character, no '..' and is not '.', so only its length can make it an invalid name
    if len(task_id) > MAX_NAME_LENGTH:
        validate_name(task_id, "task id")
    return parsed


def prefix_end(prefix: str) -> str:
    """The smallest string greater than every string that starts with ``prefix``."""
    if not prefix:
        return "\U0010ffff"
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# -- segments ------------------------------------------------------------------------------
class Segment:
    """How one ``{field}`` of a :class:`KeyTemplate` becomes text and back.

    :meth:`format` validates the value and raises :class:`InvalidName` naming the field;
    :meth:`parse` returns ``None`` when the text cannot be this segment. ``parse`` need
    not validate names: :meth:`KeyTable.parse` builds the parsed key again and compares,
    so every value it returns has passed :meth:`format`.
    """

    def format(self, value: Any) -> str:
        """The text of ``value`` in a key; :class:`InvalidName` if it cannot be one."""
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        """The value that ``text`` spells, or ``None`` if it spells none."""
        return text


class Name(Segment):
    """A name checked by :func:`validate_name`; ``what`` names it in errors."""

    def __init__(self, what: str, *, allow_dash: bool = True) -> None:
        self.what = what
        self.allow_dash = allow_dash

    def format(self, value: Any) -> str:
        """``value`` if it is a valid name."""
        if type(value) is str:
            return _valid_name(value, self.what, self.allow_dash)
        return validate_name(value, self.what, allow_dash=self.allow_dash)


class TaskIdSegment(Segment):
    """A task id ``<cluster>-<service>-<version>-<instance>`` with valid parts."""

    def format(self, value: Any) -> str:
        """``value`` if it is a valid task id."""
        if not isinstance(value, str):
            raise InvalidName(f"invalid task id {value!r}: must be a string")
        _validate_task_id(value)
        return value


class Natural(Segment):
    """An integer ≥ 0 in ASCII decimal without leading zeros (one spelling per number)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def format(self, value: Any) -> str:
        """``value`` in decimal if it is an integer ≥ 0."""
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidName(f"invalid {self.what} {value!r}: must be an integer ≥ 0")
        return str(value)

    def parse(self, text: str) -> int | None:
        """The number, or ``None`` unless ``text`` is canonical ASCII decimal."""
        if text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0")):
            return int(text)
        return None


# -- templates -----------------------------------------------------------------------------
_P = ParamSpec("_P")
_S = TypeVar("_S", bound=msgspec.Struct)
_K = TypeVar("_K", bound=msgspec.Struct)

#: a template's parts: literal segments, and ``(field, Segment)`` for each placeholder
_Part = str | tuple[str, Segment]


class _TableMember:
    """A descriptor in a :class:`KeyTable`'s body; it caches what it gives each table in
    the table's ``__dict__`` under its own name, so later lookups skip it."""

    name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name


class KeyTemplate(_TableMember, Generic[_P, _S]):
    """One kind of key: a ``/``-separated pattern whose ``{field}`` segments are the
    fields of ``struct``, in the Struct's order, each given its :class:`Segment`.

    As an attribute of a :class:`KeyTable` it is the builder of its keys: it takes the
    Struct's fields and returns the key under the table's prefix (checked by mypy, since
    it has the Struct's own signature)::

        class Keyspace(KeyTable[Key]):
            host_task = KeyTemplate("state/hosts/{host}/{task_id}", HostTaskKey,
                                    host=Name("host name"), task_id=TaskIdSegment())

        Keyspace().host_task("h1", "default-web-2-0")  # 'sked/state/hosts/h1/default-web-2-0'

    The first segment must be a literal (the key's root), and every placeholder is a
    whole segment, so a key parses by splitting it on ``/``.
    """

    def __init__(self, pattern: str, struct: Callable[_P, _S], **segments: Segment) -> None:
        self.pattern = pattern
        self.struct: type[_S] = cast("type[_S]", struct)
        parts: list[_Part] = []
        for text in pattern.split("/"):
            if text.startswith("{") and text.endswith("}") and text[1:-1] in segments:
                parts.append((text[1:-1], segments[text[1:-1]]))
            elif text and "{" not in text and "}" not in text:
                parts.append(text)
            else:
                raise TypeError(f"key template {pattern!r}: segment {text!r} is neither a "
                                "literal nor a {field} given a Segment")
        fields = tuple(p[0] for p in parts if isinstance(p, tuple))
        if fields != self.struct.__struct_fields__ or len(segments) != len(fields):
            raise TypeError(f"key template {pattern!r}: fields {fields} must be exactly "
                            f"{self.struct.__name__}'s {self.struct.__struct_fields__}")
        if not isinstance(parts[0], str):
            raise TypeError(f"key template {pattern!r}: must start with a literal segment")
        self.root = parts[0]
        self.depth = len(parts)  # the number of segments of its keys
        #: each field's segment, in the Struct's order
        self.segments = {field: segments[field] for field in fields}
        self._parts = tuple(parts)
        self._fields = tuple(self.segments.items())
        self._text = "/".join(p if isinstance(p, str) else "{}" for p in parts)

    def __repr__(self) -> str:
        return f"KeyTemplate({self.pattern!r}, {self.struct.__name__})"

    @overload
    def __get__(self, table: None, owner: type) -> KeyTemplate[_P, _S]: ...
    @overload
    def __get__(self, table: KeyTable[Any], owner: type) -> Callable[_P, str]: ...
    def __get__(self, table: KeyTable[Any] | None, owner: type
                ) -> KeyTemplate[_P, _S] | Callable[_P, str]:
        if table is None:
            return self
        prefix, struct, format_ = table.prefix, self.struct, self.format
        segments = tuple(self.segments.values())
        positional = self._joiner(prefix)

        # a key is built several times over (a plan's task, its index entry, its event
        # record, the watch's echo …): the keys of valid names are remembered (typed, so
        # True is never taken for 1; an exception is not remembered)
        remembered = functools.lru_cache(maxsize=KEYS_REMEMBERED, typed=True)(positional)

        def build(*args: _P.args, **kwargs: _P.kwargs) -> str:
            if kwargs or len(args) != len(segments):  # let the Struct sort them out
                return prefix + format_(struct(*args, **kwargs))
            try:
                return remembered(*args)
            except TypeError:  # an unhashable value: said by its segment
                return positional(*args)

        build.__name__ = self.name
        build.__doc__ = f"Key ``{self.pattern}`` under the prefix."
        table.__dict__[self.name] = build
        return build

    def _joiner(self, prefix: str) -> Callable[..., str]:
        """The key of positional field values under ``prefix``, each validated by its
        segment: the literal text between the fields is joined once, here."""
        literals = [prefix]  # the text before each field, then the text after the last
        for part in self._parts:
            if isinstance(part, str):
                literals[-1] += f"{part}/"
            else:
                literals.append("/")
        literals[-1] = literals[-1][:-1]
        formats = [segment.format for segment in self.segments.values()]
        if len(formats) == 1:
            head, tail = literals
            f0 = formats[0]

            def one(a: Any) -> str:
                return head + f0(a) + tail
            return one
        if len(formats) == 2:
            head, mid, tail = literals
            f0, f1 = formats

            def two(a: Any, b: Any) -> str:
                return head + f0(a) + mid + f1(b) + tail
            return two

        def many(*args: Any) -> str:
            texts = [f(a) for f, a in zip(formats, args, strict=True)]
            return literals[0] + "".join(t + lit for t, lit in zip(texts, literals[1:],
                                                                    strict=True))
        return many

    def format(self, key: _S) -> str:
        """The key (without prefix) of a parsed key; every segment is validated."""
        return self._text.format(*[segment.format(getattr(key, field))
                                   for field, segment in self._fields])

    def match(self, segments: list[str]) -> _S | None:
        """The parsed key if ``segments`` (a key split on ``/``, without prefix) has this
        template's shape; the names in it are not validated yet (see :meth:`format`)."""
        if len(segments) != self.depth:
            return None
        values = []
        for text, part in zip(segments, self._parts, strict=True):
            if isinstance(part, str):
                if text != part:
                    return None
            else:
                value = part[1].parse(text)
                if value is None:
                    return None
                values.append(value)
        return self.struct(*values)

    def prefix(self) -> Prefix:
        """The prefix every key of this template starts with (up to its first field), as
        an attribute of its table: ``clusters = cluster.prefix()``."""
        return Prefix(self._prefix_parts(0))

    def prefix_for(self, field: str) -> PrefixFor:
        """The prefix of the keys whose first field is given, up to the next field, as a
        method of its table: ``host_tasks = host_task.prefix_for("host")``."""
        parts = self._prefix_parts(1)
        if not isinstance(parts[-1], tuple) or parts[-1][0] != field:
            raise TypeError(f"key template {self.pattern!r}: {field!r} is not its first "
                            "field, or no field follows it")
        return PrefixFor(parts)

    def _prefix_parts(self, fields: int) -> tuple[_Part, ...]:
        """The parts before the placeholder after the first ``fields`` placeholders."""
        seen = 0
        for i, part in enumerate(self._parts):
            if isinstance(part, tuple):
                if seen == fields:
                    return self._parts[:i]
                seen += 1
        raise TypeError(f"key template {self.pattern!r}: has no field after its first "
                        f"{fields}; its keys share no prefix")


class Prefix(_TableMember):
    """A template's constant prefix under its table's prefix, read as an attribute."""

    def __init__(self, parts: tuple[_Part, ...]) -> None:
        self.text = "".join(f"{p}/" for p in parts if isinstance(p, str))

    @overload
    def __get__(self, table: None, owner: type) -> Prefix: ...
    @overload
    def __get__(self, table: KeyTable[Any], owner: type) -> str: ...
    def __get__(self, table: KeyTable[Any] | None, owner: type) -> Prefix | str:
        if table is None:
            return self
        value = table.__dict__[self.name] = table.prefix + self.text
        return value


class PrefixFor(_TableMember):
    """A template's prefix given its first field, read as a method of its table."""

    def __init__(self, parts: tuple[_Part, ...]) -> None:
        literal, (_, self.segment) = parts[:-1], cast("tuple[str, Segment]", parts[-1])
        self.text = "".join(f"{p}/" for p in literal if isinstance(p, str))

    @overload
    def __get__(self, table: None, owner: type) -> PrefixFor: ...
    @overload
    def __get__(self, table: KeyTable[Any], owner: type) -> Callable[[str], str]: ...
    def __get__(self, table: KeyTable[Any] | None, owner: type
                ) -> PrefixFor | Callable[[str], str]:
        if table is None:
            return self
        head, format_ = table.prefix + self.text, self.segment.format

        def prefix(value: str) -> str:
            return f"{head}{format_(value)}/"

        prefix.__name__ = self.name
        table.__dict__[self.name] = prefix
        return prefix


class KeyTable(Generic[_K]):
    """A set of keys under one prefix, declared as :class:`KeyTemplate` attributes.

    A subclass lists its templates in its body (the declarative table); builders,
    prefixes, :meth:`build` and :meth:`parse` all come from that list. ``_K`` is the union
    of the table's parsed-key Structs. ``schema`` names the table in parse errors.

    A table is made from a prefix, or from another table whose prefix it shares:
    ``JobKeyspace(keyspace)`` holds the job keys under ``keyspace``'s prefix.
    """

    schema: ClassVar[str] = "skedlib's key schema"
    _templates: ClassVar[tuple[KeyTemplate[..., Any], ...]] = ()
    _by_struct: ClassVar[dict[type, KeyTemplate[..., Any]]] = {}
    _by_shape: ClassVar[dict[tuple[int, str], tuple[KeyTemplate[..., Any], ...]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        templates = {name: value for klass in reversed(cls.__mro__)
                     for name, value in vars(klass).items() if isinstance(value, KeyTemplate)}
        cls._templates = tuple(templates.values())
        cls._by_struct = {}
        shapes: dict[tuple[int, str], list[KeyTemplate[..., Any]]] = {}
        for template in cls._templates:
            if template.struct in cls._by_struct:
                raise TypeError(f"{cls.__name__}: {template.struct.__name__} has two "
                                "key templates")
            cls._by_struct[template.struct] = template
            shapes.setdefault((template.depth, template.root), []).append(template)
        cls._by_shape = {shape: tuple(ts) for shape, ts in shapes.items()}

    def __init__(self, prefix: str | KeyTable[Any] = DEFAULT_PREFIX) -> None:
        self.prefix: str
        if isinstance(prefix, KeyTable):
            self.prefix = prefix.prefix
            return
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        for segment in prefix.split("/")[:-1]:
            validate_name(segment, "key prefix segment")
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.prefix!r})"

    def __reduce__(self) -> tuple[type[KeyTable[_K]], tuple[str]]:
        # the builders cached in the instance are closures: rebuild from the prefix
        return type(self), (self.prefix,)

    @classmethod
    def templates(cls) -> tuple[KeyTemplate[..., Any], ...]:
        """The table: every template, in declaration order."""
        return cls._templates

    def build(self, key: _K) -> str:
        """The string form of a parsed key."""
        template = self._by_struct.get(type(key))
        if template is None:
            raise TypeError(f"not a key of {type(self).__name__}: {key!r}")
        return self.prefix + template.format(key)

    def parse(self, key: str) -> _K:
        """Parse a key string; raises :class:`ValidationError` if it is not one of this
        table's keys (:class:`InvalidName` if it has a key's shape but a bad name)."""
        if not key.startswith(self.prefix):
            raise ValidationError(f"key {key!r} is not under prefix {self.prefix!r}")
        rest = key[len(self.prefix):]
        segments = rest.split("/")
        for template in self._by_shape.get((len(segments), segments[0]), ()):
            parsed = template.match(segments)
            if parsed is not None:
                if template.format(parsed) != rest:  # validates every name in it
                    continue
                return cast("_K", parsed)
        raise ValidationError(f"key {key!r} is not in {self.schema}")


# -- the core keys -------------------------------------------------------------------------
class ClusterKey(msgspec.Struct, frozen=True, tag=True):
    """A cluster's desired state."""

    name: str


class ServiceKey(msgspec.Struct, frozen=True, tag=True):
    """A service's desired state."""

    name: str


class TaskDefinitionKey(msgspec.Struct, frozen=True, tag=True):
    """One version of a task definition (immutable once stored)."""

    name: str
    version: int


class HostConfigKey(msgspec.Struct, frozen=True, tag=True):
    """A host's operator-side settings (drain, attributes)."""

    name: str


class TaskKey(msgspec.Struct, frozen=True, tag=True):
    """An issued task."""

    task_id: str


class HostTaskKey(msgspec.Struct, frozen=True, tag=True):
    """An issued task in its host's index (what the host's agent watches)."""

    host: str
    task_id: str


class HealthKey(msgspec.Struct, frozen=True, tag=True):
    """A task's actual state, written by its agent."""

    task_id: str


class AgentKey(msgspec.Struct, frozen=True, tag=True):
    """A host's live record, bound to its agent's lease."""

    host: str


class LockKey(msgspec.Struct, frozen=True, tag=True):
    """The scheduler lock of one service in one cluster."""

    cluster: str
    service: str


class ServiceStatusKey(msgspec.Struct, frozen=True, tag=True):
    """A scheduler's report on one service: a :class:`~skedlib.models.ServiceStatus`."""

    cluster: str
    service: str


class HostAllocKey(msgspec.Struct, frozen=True, tag=True):
    """A host's allocation marker: its revision changes with every commit that places a
    task on the host (see :mod:`skedlib.scheduling.commit`)."""

    host: str


class RolloutKey(msgspec.Struct, frozen=True, tag=True):
    """A service's rollout history."""

    cluster: str
    service: str


Key = (ClusterKey | ServiceKey | TaskDefinitionKey | HostConfigKey | TaskKey | HostTaskKey
       | HealthKey | AgentKey | LockKey | ServiceStatusKey | HostAllocKey | RolloutKey)

_CLUSTER = Name("cluster name", allow_dash=False)
_SERVICE = Name("service name")
_HOST = Name("host name")
_TASK_ID = TaskIdSegment()


class Keyspace(KeyTable[Key]):
    """Builds and parses skedlib's core keys under one prefix.

    >>> ks = Keyspace()
    >>> ks.task("default-web-2-0")
    'sked/state/tasks/default-web-2-0'
    >>> ks.parse("sked/state/hosts/h1/default-web-2-0")
    HostTaskKey(host='h1', task_id='default-web-2-0')
    """

    # -- the table: one template per key ---------------------------------------------------
    #: desired state, written by ``sked apply`` and the operator
    cluster = KeyTemplate("config/clusters/{name}", ClusterKey, name=_CLUSTER)
    service = KeyTemplate("config/services/{name}", ServiceKey, name=_SERVICE)
    task_definition = KeyTemplate("config/task_definitions/{name}/{version}",
                                  TaskDefinitionKey, name=Name("task definition name"),
                                  version=Natural("task definition version"))
    host_config = KeyTemplate("config/hosts/{name}", HostConfigKey, name=_HOST)
    #: issued state: a scheduler writes a task at both keys in one transaction
    task = KeyTemplate("state/tasks/{task_id}", TaskKey, task_id=_TASK_ID)
    host_task = KeyTemplate("state/hosts/{host}/{task_id}", HostTaskKey,
                            host=_HOST, task_id=_TASK_ID)
    #: actual state, written by agents
    task_health = KeyTemplate("state/health/{task_id}", HealthKey, task_id=_TASK_ID)
    agent = KeyTemplate("state/agents/{host}", AgentKey, host=_HOST)
    #: written by schedulers
    service_status = KeyTemplate("state/services/{cluster}/{service}", ServiceStatusKey,
                                 cluster=_CLUSTER, service=_SERVICE)
    host_alloc = KeyTemplate("state/alloc/{host}", HostAllocKey, host=_HOST)
    rollout = KeyTemplate("state/rollouts/{cluster}/{service}", RolloutKey,
                          cluster=_CLUSTER, service=_SERVICE)
    lock = KeyTemplate("locks/{cluster}/{service}", LockKey,
                       cluster=_CLUSTER, service=_SERVICE)

    # -- prefixes --------------------------------------------------------------------------
    clusters = cluster.prefix()
    services = service.prefix()
    task_definitions = task_definition.prefix()
    #: ``task_definition_versions(name)``: every version of one task definition
    task_definition_versions = task_definition.prefix_for("name")
    host_configs = host_config.prefix()
    tasks = task.prefix()
    all_host_tasks = host_task.prefix()
    #: ``host_tasks(host)``: what the agent of ``host`` watches
    host_tasks = host_task.prefix_for("host")
    health = task_health.prefix()
    agents = agent.prefix()
    service_statuses = service_status.prefix()
    host_allocs = host_alloc.prefix()
    rollouts = rollout.prefix()
    locks = lock.prefix()

    @property
    def config(self) -> str:
        """Prefix of the whole desired state."""
        return f"{self.prefix}config/"
