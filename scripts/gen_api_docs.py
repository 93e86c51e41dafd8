#!/usr/bin/env python3
"""Render the REST API's OpenAPI document (environments and jobs) as docs/api.md.

    python scripts/gen_api_docs.py           # rewrite docs/api.md
    python scripts/gen_api_docs.py --check   # exit 1 if docs/api.md is out of date

The document comes from :func:`skedlib.api.openapi_document`, the one
``sked serve`` serves at ``GET /v1/openapi.json``; ``tests/api/test_docs.py``
fails when docs/api.md was not regenerated after a change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "api.md"

_METHODS = ("get", "put", "post", "delete")


def _anchor(name: str) -> str:
    return name.lower()


def _clean(text: str) -> str:
    """One paragraph of a description, with reST ``code`` made Markdown `code`."""
    return " ".join(text.replace("``", "`").split())


def _type(schema: dict[str, Any]) -> str:
    """A short Markdown rendering of a JSON Schema type."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in schema:
        parts = [_type(s) for s in schema["anyOf"]]
        return " \\| ".join(parts)
    if "enum" in schema:
        return " \\| ".join(f'`"{v}"`' for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    return str(kind)


def _limits(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return "; ".join(filter(None, (_limits(s) for s in schema["anyOf"])))
    out = []
    for key, label in (("minLength", "length ≥"), ("maxLength", "length ≤"),
                       ("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
                       ("maxItems", "items ≤")):
        if key in schema:
            out.append(f"{label} {schema[key]}")
    if "pattern" in schema:
        out.append(f"pattern `{schema['pattern']}`")
    if "items" in schema:
        inner = _limits(schema["items"])
        if inner:
            out.append(f"each: {inner}")
    return ", ".join(out)


def _description(schema: dict[str, Any]) -> str:
    text = schema.get("description", "")
    if not text and "anyOf" in schema:
        text = next((s["description"] for s in schema["anyOf"] if "description" in s), "")
    if not text and "items" in schema:
        text = schema["items"].get("description", "")
    return _clean(text)


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else ""


def _operation(method: str, path: str, op: dict[str, Any], shared: list[dict[str, Any]],
               base: str) -> list[str]:
    lines = [f"### `{method.upper()} {base}{path}`", "", f"**{op['summary']}.** "
             + _clean(op.get("description", "")), ""]
    if op.get("security") == []:
        lines += ["No authentication.", ""]
    params = shared + op.get("parameters", [])
    if params:
        lines += ["| parameter | in | type | required | description |",
                  "| --- | --- | --- | --- | --- |"]
        for p in params:
            schema = p["schema"]
            default = f" (default `{json.dumps(schema['default'])}`)" if "default" in schema \
                else ""
            lines.append(f"| `{p['name']}` | {p['in']} | {_type(schema)} | "
                         f"{'yes' if p.get('required') else 'no'} | "
                         f"{_cell(_clean(p.get('description', '')) + default)} |")
        lines.append("")
    body = op.get("requestBody")
    if body:
        schema = body["content"]["application/json"]["schema"]
        lines += [f"Request body (JSON): {_type(schema)}", ""]
    lines += ["| status | body | meaning |", "| --- | --- | --- |"]
    for status, response in op["responses"].items():
        content = response.get("content", {})
        if "application/json" in content or not content:
            body_type = _type(content.get("application/json", {}).get("schema", {}))
        else:
            body_type = ", ".join(f"`{media}`" for media in content)
        lines.append(f"| {status} | {body_type} | {_cell(_clean(response['description']))} |")
    lines.append("")
    return lines


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [_clean(schema["description"]), ""]
    if schema.get("type") != "object":
        lines += [f"Type: {_type(schema)}" + (f" ({_limits(schema)})" if _limits(schema)
                                               else ""), ""]
        return lines
    if schema.get("additionalProperties") is False:
        lines += ["Unknown fields are refused (400).", ""]
    required = set(schema.get("required", []))
    lines += ["| field | type | required | default | description |",
              "| --- | --- | --- | --- | --- |"]
    for field, prop in schema.get("properties", {}).items():
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        limits = _limits(prop)
        text = _description(prop) + (f" ({limits})" if limits else "")
        lines.append(f"| `{field}` | {_type(prop)} | {'yes' if field in required else 'no'} | "
                     f"{default} | {_cell(text)} |")
    lines.append("")
    return lines


def render(doc: dict[str, Any]) -> str:
    """docs/api.md for the OpenAPI document ``doc``."""
    base = doc["servers"][0]["url"]
    info = doc["info"]
    lines = [
        "# REST API reference",
        "",
        "<!-- Generated by scripts/gen_api_docs.py from the OpenAPI document that "
        "`sked serve` serves; do not edit by hand. -->",
        "",
        f"{info['title']}, version {info['version']} (OpenAPI {doc['openapi']}). "
        + _clean(info.get("description", "")),
        "",
        f"Every path is under `{base}`; the OpenAPI document itself is at "
        f"`GET {base}/openapi.json`. Request and response bodies are JSON, but for a job's "
        "output (`text/plain`, streamed); a request body must say `Content-Type: "
        "application/json`. Every operation but `ping` and `openapi.json` needs "
        "`Authorization: Bearer <token>`: the token of `$SKED_API_TOKEN` or `--token-file`, "
        "else the one `sked serve` writes on its first start (it prints where); `GET` "
        "operations also take the read-only token (`$SKED_API_READ_TOKEN` or "
        "`--read-token-file`; anything else with it is a 403). Every "
        "request must name the server in `Host` (its listen address, or a name given with "
        "`--allowed-host`) and must not come from another site (`Origin`, "
        "`Sec-Fetch-Site`); see [security.md](security.md). How to use it: "
        "[environments.md](environments.md) "
        "(environments and deployments), [jobs.md](jobs.md) (batch jobs); the same "
        "operations from the shell: [cli.md](cli.md).",
        "",
        "## Operations",
        "",
        "| method | path | summary |",
        "| --- | --- | --- |",
    ]
    for path, item in doc["paths"].items():
        for method in _METHODS:
            if method in item:
                anchor = f"{method}-{base}{path}".lower()
                anchor = "".join(c for c in anchor.replace(" ", "-")
                                 if c.isalnum() or c in "-_")
                lines.append(f"| {method.upper()} | [`{base}{path}`](#{anchor}) | "
                             f"{item[method]['summary']} |")
    lines += ["", "## Operation details", ""]
    for path, item in doc["paths"].items():
        for method in _METHODS:
            if method in item:
                lines += _operation(method, path, item[method], item.get("parameters", []),
                                    base)
    lines += ["## Schemas", ""]
    for name, schema in doc["components"]["schemas"].items():
        lines += _schema(name, schema)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/api.md differs from what would be generated")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from skedlib.api import openapi_document

    text = render(openapi_document())
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run python "
                  "scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
