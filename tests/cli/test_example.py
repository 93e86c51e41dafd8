"""``sked example [NAME]``: the example manifests shipped as package data."""

from __future__ import annotations

from pathlib import Path

import pytest

from skedlib.cli.example import describe, examples
from skedlib.cli.main import main
from skedlib.codecs import load_manifest

SHIPPED = Path(__file__).resolve().parents[2] / "skedlib" / "examples"


def test_every_shipped_manifest_is_listed_with_its_description(
        capsys: pytest.CaptureFixture[str]) -> None:
    names = sorted(p.stem for p in SHIPPED.glob("*.yml"))
    assert "hello-world" in names and list(examples()) == names
    assert main(["example"]) == 0
    out = capsys.readouterr().out
    for name in names:
        line = next(line for line in out.splitlines() if line.startswith(f"{name} "))
        assert describe((SHIPPED / f"{name}.yml").read_text()) in line
    assert "A cluster running two instances of a tiny web server" in out


def test_an_example_is_printed_as_it_ships_and_applies(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    for name in examples():
        assert main(["example", name]) == 0
        out = capsys.readouterr().out
        assert out == (SHIPPED / f"{name}.yml").read_text()
        written = tmp_path / f"{name}.yml"
        written.write_text(out)
        assert load_manifest(written).manifest.services  # a valid manifest, with services
    assert main(["example", "hello-world.yml"]) == 0  # the file name works too
    assert capsys.readouterr().out == (SHIPPED / "hello-world.yml").read_text()


def test_an_unknown_example_is_one_line_naming_the_known_ones(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["example", "nosuch"]) == 1
    err = capsys.readouterr().err
    assert err == "sked: error: no example named 'nosuch' (examples: hello-world, schedulers)\n"


def test_describe_takes_the_first_paragraph_of_the_leading_comment() -> None:
    text = "# One line\n# and its end.\n#\n# Another paragraph.\nclusters: []\n"
    assert describe(text) == "One line and its end."
    assert describe("clusters: []\n") == "-"
