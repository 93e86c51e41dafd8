"""The batch job routes (``/v1/jobs…``, ``/v1/nodes``: the work-stealing design's submit,
cancel, status and log calls) over :class:`~skedlib.jobs.client.JobClient`."""

from __future__ import annotations

import urllib.parse

import msgspec

from skedlib.api.errors import HttpError
from skedlib.api.responses import Response, Stream
from skedlib.api.routing import (
    BASE_PATH,
    Call,
    QueryParam,
    Route,
    boolean,
    integer,
    non_negative,
    one_of,
    seconds,
)
from skedlib.environments.models import JobNodeList
from skedlib.jobs.client import DEFAULT_PAGE_SIZE, FOLLOW_POLL, MAX_PAGE_SIZE, JobWaitTimeout
from skedlib.jobs.models import JOB_STATES, JobSpec
from skedlib.jobs.reasons import with_waiting_reasons

__all__ = ["DEFAULT_WAIT", "MAX_WAIT", "ROUTES"]

DEFAULT_WAIT = 30.0
"""Seconds ``GET /v1/jobs/{id}/wait`` waits when no ``timeout`` is given."""
MAX_WAIT = 60.0
"""The longest ``timeout`` ``GET /v1/jobs/{id}/wait`` accepts (larger: 400)."""

_JOB = {"id": "the job's id"}
_ID_SCHEMA = {"$ref": "#/components/schemas/Name"}


def _submit(call: Call) -> Response:
    job = call.jobs.submit_spec(call.data, call.query.get("id"))
    return Response(201, job, {"Location": f"{BASE_PATH}/jobs/"
                                           f"{urllib.parse.quote(job.id, safe='')}"})


def _list(call: Call) -> Response:
    page = call.jobs.page(status=call.query.get("status"),
                          limit=call.query.get("limit", DEFAULT_PAGE_SIZE),
                          next_token=call.query.get("next_token") or None)
    with_waiting_reasons(call.jobs, page.items)
    return Response(200, page)


def _status(call: Call) -> Response:
    return Response(200, call.jobs.status(call.path["id"]))


def _cancel(call: Call) -> Response:
    return Response(200, call.jobs.cancel(call.path["id"]))


def _wait(call: Call) -> Response:
    job_id = call.path["id"]
    try:
        return Response(200, call.jobs.wait(job_id, call.query.get("timeout", DEFAULT_WAIT)))
    except JobWaitTimeout:
        return Response(200, call.jobs.status(job_id))


def _logs(call: Call) -> Response:
    job_id = call.path["id"]
    job = call.jobs.store.get(job_id).job
    if not job.log_url:
        raise HttpError(409, f"job {job_id} has no output yet: it is {job.status}"
                             + (" and never started" if job.attempts == 0 else ""))
    chunks = call.jobs.logs(job_id, follow=call.query.get("follow", False),
                            offset=call.query.get("offset", 0))
    return Response(200, Stream(chunks), {"Cache-Control": "no-store",
                                          "X-Content-Type-Options": "nosniff"})


def _nodes(call: Call) -> Response:
    # a node's log token is for readers of the store, not for API clients
    nodes = [msgspec.structs.replace(n, log_token="") for n in call.jobs.nodes()]
    return Response(200, JobNodeList(items=sorted(nodes, key=lambda n: n.name)))


_LOGS_OK = {
    "description": "The job's output (stdout and stderr as they came), raw bytes as the "
                   "command wrote them, streamed with chunked transfer encoding as the node "
                   "sends them. If fetching from the node fails midway the response ends "
                   "without its final chunk, so a client sees an incomplete body rather "
                   "than a clean end.",
    "content": {"text/plain": {"schema": {"type": "string"}}}}

ROUTES = (
    Route("POST", "/jobs", _submit, "submitJob", "Submit a job",
          "Queues a run-to-completion command; any job worker whose free capacity fits its "
          "requirements may claim it. Units: memory and disk in MiB, cpu_units 1024 per "
          "core, timeout in nanoseconds (0: none). The response is the queued job, with "
          "its id (also in the Location header).",
          ok="201", ok_schema="Job", errors=("400", "409", "413"), body=JobSpec, tag="jobs",
          meanings={"400": "Bad input: malformed JSON, a wrong or unknown field (named), an "
                           "empty command, a bad environment variable name, a bad id. "
                           "Nothing changed.",
                    "409": "A job with this id already exists. Nothing changed."},
          query=(QueryParam("id", _ID_SCHEMA,
                            "the new job's id (default: a new UUID version 7); a retried "
                            "submit with the same id gets 409 instead of a second job"),)),
    Route("GET", "/jobs", _list, "listJobs", "List jobs",
          "Jobs oldest first (ids sort by submit time), a page at a time. A queued job's "
          "reason also says why no node has claimed it.",
          ok_schema="JobPage", errors=("400",), tag="jobs",
          query=(QueryParam("status", {"enum": list(JOB_STATES)}, "only jobs in this state",
                            one_of(JOB_STATES)),
                 QueryParam("limit", {"type": "integer", "minimum": 1,
                                      "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE},
                            "items per page", integer),
                 QueryParam("next_token", {"type": "string"},
                            "the next_token of the previous page (absent or empty: the "
                            "first page)"))),
    Route("GET", "/jobs/{id}", _status, "getJob", "Job status",
          "The job: its state, node, attempts, exit code and timestamps. The reason says "
          "why it is in its state; for a queued job, also why no node has claimed it (no "
          "worker running, none large enough, or none with free resources now).",
          ok_schema="Job", errors=("400", "404"), tag="jobs", path_docs=_JOB),
    Route("POST", "/jobs/{id}/cancel", _cancel, "cancelJob", "Cancel a job",
          "Cancels a queued or running job (a running one is stopped by its node); the "
          "response is the canceled job. No request body.",
          ok_schema="Job", errors=("400", "404", "409"), tag="jobs", path_docs=_JOB,
          meanings={"409": "The job already ended (complete, failed or canceled); nothing "
                           "changed."}),
    Route("GET", "/jobs/{id}/wait", _wait, "waitJob", "Wait for a job to end",
          "A long poll: answers as soon as the job is complete, failed or canceled, or "
          f"after timeout seconds (at most {MAX_WAIT:g}; larger is a 400), with the job "
          "either way: check its status (complete, failed, canceled: it ended; queued, "
          "running: call again).",
          ok_schema="Job", errors=("400", "404"), tag="jobs", path_docs=_JOB,
          query=(QueryParam("timeout", {"type": "number", "minimum": 0, "maximum": MAX_WAIT,
                                        "default": DEFAULT_WAIT},
                            "seconds to wait at most", seconds(MAX_WAIT)),)),
    Route("GET", "/jobs/{id}/logs", _logs, "getJobLogs", "A job's output",
          "The output of the job's last attempt from byte offset, fetched from the node "
          "that ran it (job workers keep it; the server holds none). With follow=true the "
          "response goes on as the job writes, until the job ends (also across a requeue "
          "to another node, continuing with the new attempt's output); the node holds a "
          f"quiet stream open {FOLLOW_POLL:g} s at a time. Without follow, what the node "
          "has now.",
          errors=("400", "404", "409"), tag="jobs", ok_response=_LOGS_OK, path_docs=_JOB,
          meanings={"409": "The job has no output yet: it was never claimed by a worker.",
                    "503": "The store is unavailable, or the node that holds the output "
                           "cannot be reached, answered an error or no longer has it; the "
                           "message says which."},
          query=(QueryParam("offset", {"type": "integer", "minimum": 0, "default": 0},
                            "the first byte to send (resume a read)", non_negative),
                 QueryParam("follow", {"type": "boolean", "default": False},
                            "keep streaming until the job ends", boolean))),
    Route("GET", "/nodes", _nodes, "listJobNodes", "List job workers",
          "The live job workers (skedlib-agent --jobs), by name: capacity, slots, how they "
          "enforce limits, where they serve job output.",
          ok_schema="JobNodeList", tag="jobs"),
)
"""The routes, in the document's order."""
