"""The event route: ``GET /v1/events?kind=&name=``, the recent events of one task,
service, host or job (:mod:`skedlib.events`), as ``sked describe`` shows them."""

from __future__ import annotations

from skedlib.api.errors import HttpError
from skedlib.api.responses import Response
from skedlib.api.routing import Call, QueryParam, Route, one_of
from skedlib.events import OBJECT_KINDS, EventHistory, ObjectKind, read_events
from skedlib.keys import validate_name

__all__ = ["ROUTES"]


def _events(call: Call) -> Response:
    kind: ObjectKind | None = call.query.get("kind")
    name: str | None = call.query.get("name")
    if kind is None or name is None:
        raise HttpError(400, "kind and name are required: GET /v1/events?kind=task&name=ID")
    validate_name(name, f"{kind} name")
    events = read_events(call.environments.store, kind, name)
    return Response(200, EventHistory(kind=kind, name=name, events=events),
                    {"Cache-Control": "no-store"})


ROUTES = (
    Route("GET", "/events", _events, "getEvents", "An object's events",
          "The recent events of one task, service, host or job, oldest first: placed (the "
          "host, and why), started, healthy, unhealthy, restarted, stopped, rejected, "
          "moved, evicted, oom, unschedulable; for a job, its lifecycle. At most 50 per "
          "object, for an hour after the last one. An object without events (or one that "
          "never existed) has an empty list. Readable with the read-only token.",
          ok_schema="EventHistory", errors=("400",), tag="events",
          meanings={"400": "kind or name is missing, or not a valid kind or name."},
          query=(QueryParam("kind", {"enum": list(OBJECT_KINDS)},
                            "what the object is (required)", one_of(OBJECT_KINDS)),
                 QueryParam("name", {"$ref": "#/components/schemas/Name"},
                            "the task id, service, host or job id (required)"))),
)
"""The routes, in the document's order."""
