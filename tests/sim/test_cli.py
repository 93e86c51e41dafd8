"""``sked sim trace`` and ``sked sim run`` through the CLI's main(): a small version of
the documented session (synthetic trace, two schedulers, report and plots)."""

from __future__ import annotations

import contextlib
import io
import json
import stat
import sys
from pathlib import Path

import pytest

from skedlib.cli.main import main
from skedlib.sim.report import PLOTS


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_trace_then_run_compares_both_schedulers(tmp_path: Path,
                                                  capfdbinary: pytest.CaptureFixture[bytes]
                                                  ) -> None:
    assert main(["sim", "trace", "--synthetic", "--tasks", "600", "--seed", "3"]) == 0
    trace_bytes = capfdbinary.readouterr().out
    lines = trace_bytes.splitlines()
    assert sum(json.loads(x)["count"] for x in lines if json.loads(x)["kind"] == "batch") \
        == 600
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(trace_bytes)
    out = tmp_path / "out"
    code, stdout, stderr = _run(["sim", "run", "--trace", str(trace), "--hosts", "60",
                                 "--scheduler", "binpack", "--scheduler", "spread",
                                 "--out", str(out)])
    assert code == 0, stderr
    assert stdout.splitlines()[0].split()[:3] == ["SCHEDULER", "PLACED", "UNSCHEDULABLE"]
    assert {line.split()[0] for line in stdout.splitlines()[2:]} == {"binpack", "spread"}
    report = json.loads((out / "report.json").read_text())
    assert set(report["schedulers"]) == {"binpack", "spread"}
    for r in report["schedulers"].values():
        assert r["tasks"] == 600 and r["placed"] + r["unschedulable"] >= 600
        for key in ("utilisation", "hosts_used", "fragmentation", "pending_seconds",
                    "placement_latency_ms", "moves", "unschedulable", "timeline"):
            assert key in r
        assert r["placement_latency_ms"]["plans"] > 0
        assert len(r["timeline"]) == 201
    bp, sp = report["schedulers"]["binpack"], report["schedulers"]["spread"]
    # the comparison means something: binpack packs onto fewer hosts than spread
    assert bp["hosts_used"]["mean"] < sp["hosts_used"]["mean"]
    assert bp["hosts_used"]["mean"] >= bp["hosts_used"]["lower_bound_mean"]
    # the plots are required under test (matplotlib is in the test extra)
    for name in PLOTS:
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # output holds what ran: private to the user
    assert stat.S_IMODE((out / "report.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert "plots:" in stderr


def test_run_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "batch", "t": 0, "service": "x", "memory": 1}\n')
    code, _, err = _run(["sim", "run", "--trace", str(bad), "--hosts", "2",
                         "--scheduler", "binpack", "--out", str(tmp_path / "o")])
    assert code == 1 and err.count("\n") == 1
    assert f"{bad}:1:" in err and "duration" in err
    code, _, err = _run(["sim", "run", "--trace", str(tmp_path / "missing.jsonl"),
                         "--hosts", "2", "--scheduler", "binpack", "--out",
                         str(tmp_path / "o")])
    assert code == 1 and "missing.jsonl" in err and err.count("\n") == 1
    good = tmp_path / "good.jsonl"
    good.write_text('{"kind": "batch", "t": 0, "service": "x", "memory": 1, '
                    '"duration": 1}\n')
    code, _, err = _run(["sim", "run", "--trace", str(good), "--hosts", "2",
                         "--scheduler", "no-such-scheduler", "--out", str(tmp_path / "o")])
    assert code == 1 and "no-such-scheduler" in err and err.count("\n") == 1


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    from skedlib.cli.sim import ProgressBar

    tty, pipe = _Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = ProgressBar("binpack", stream=stream, width=10)
        bar(5, 10)
        bar(10, 10)
        bar.close()
    assert pipe.getvalue() == ""
    assert tty.getvalue().endswith("\rbinpack [##########] 100% 10/10 tasks\n")
    assert "[#####     ]  50% 5/10" in tty.getvalue()


def test_without_matplotlib_the_report_is_written_and_plots_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"kind": "batch", "t": 0, "service": "x", "memory": 10, '
                     '"duration": 5, "count": 3}\n')
    code, _, stderr = _run(["sim", "run", "--trace", str(trace), "--hosts", "2",
                            "--scheduler", "spread", "--out", str(tmp_path / "o")])
    assert code == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["schedulers"]["spread"]["placed"] == 3
    assert not any((tmp_path / "o" / name).exists() for name in PLOTS)
    assert [line for line in stderr.splitlines() if line.startswith("sked:")] == [
        "sked: plots skipped: matplotlib is not installed (pip install 'skedlib[sim]')"]
