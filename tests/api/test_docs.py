"""docs/api.md is what scripts/gen_api_docs.py renders from the OpenAPI document."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from skedlib.api import openapi_document

ROOT = Path(__file__).resolve().parents[2]


def test_api_reference_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("gen_api_docs",
                                                  ROOT / "scripts" / "gen_api_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render(openapi_document())
    assert (ROOT / "docs" / "api.md").read_text() == expected, \
        "docs/api.md is out of date: run python scripts/gen_api_docs.py"


def test_the_how_to_links_the_reference() -> None:
    text = (ROOT / "docs" / "environments.md").read_text()
    assert "api.md" in text and "sked serve" in text
