"""``sked --all-datacenters get services -w`` as a real process over two etcd datacenters
on loopback: it redraws when either datacenter changes, reports one whose etcd is
stopped while it keeps following the other, and shows it again when it is back."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skedlib.client import Client
from skedlib.federation import Datacenter, federate, parse_global
from tests.harness import etcd as harness
from tests.scheduler.conftest import web_manifest


class Frames:
    """The frames a ``--watch`` process writes (not a terminal: a blank line after each)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.frames: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        lines: list[str] = []
        for line in self.proc.stdout:
            if line == "\n":
                self.frames.put("".join(lines))
                lines = []
            else:
                lines.append(line)

    def until(self, ok: Callable[[str], bool], what: str, timeout: float = 30.0) -> str:
        """The first frame for which ``ok`` holds (frames before it are skipped)."""
        seen: list[str] = []
        try:
            while True:
                frame = self.frames.get(timeout=timeout)
                seen.append(frame)
                if ok(frame):
                    return frame
        except queue.Empty:
            pytest.fail(f"no frame with {what} within {timeout}s; frames: {seen}")


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[list[harness.EtcdCluster], list[Datacenter]]]:
    """Two single-node etcd datacenters, ``east`` and ``west``, with service ``web`` written
    by the federation step (east 2, west 1), and a context ``fed`` listing them."""
    harness.require_etcd()
    harness.require_etcd_plugin()
    etcds: list[harness.EtcdCluster] = []
    try:
        for dc in ("east", "west"):
            etcds.append(harness.EtcdCluster(1, name=f"watch-{dc}").start())
        dcs = [Datacenter(name=dc, backend=e.url(timeout=1), prefix="sked/")
               for dc, e in zip(("east", "west"), etcds, strict=True)]
        doc = parse_global(web_manifest("web", desired=1) +
                           "placement:\n  web: {per_datacenter: {east: 2, west: 1}}\n", "g.yml")
        assert all(o.ok for o in federate(dcs, doc, timeout=10))
        config = tmp_path / "config.yaml"
        config.write_text("current-context: fed\ncontexts:\n  fed:\n    datacenters:\n"
                          + "".join(f"      {dc.name}: {{backend: '{dc.backend}'}}\n"
                                    for dc in dcs))
        yield etcds, dcs
    finally:
        for etcd in etcds:
            etcd.stop()


def _desired(frame: str) -> list[tuple[str, str]]:
    """(datacenter, desired) of each row of a ``get services`` table frame."""
    rows = [line.split() for line in frame.splitlines()[3:]
            if line and not line.startswith(("datacenter ", "-"))]
    return sorted((r[0], r[5]) for r in rows)


def test_watch_follows_every_datacenter_and_reports_one_that_goes_away(
        tmp_path: Path, two: tuple[list[harness.EtcdCluster], list[Datacenter]]) -> None:
    (east_etcd, _), (east, west) = two
    sked = shutil.which("sked", path=str(Path(sys.executable).parent))
    assert sked is not None
    env = {k: v for k, v in os.environ.items()
           if k not in ("SKED_BACKEND", "SKED_PREFIX", "SKED_CONTEXT")}
    env["SKED_CONFIG"] = str(tmp_path / "config.yaml")
    with subprocess.Popen([sked, "--all-datacenters", "--dc-timeout", "3", "get", "services",
                           "-w"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc, \
            Client.open(west.backend, west.prefix) as west_client, \
            Client.open(east.backend, east.prefix) as east_client:
        try:
            frames = Frames(proc)
            first = frames.until(lambda f: _desired(f) == [("east", "2"), ("west", "1")],
                                 "both datacenters")
            assert "2 of 2 datacenters answered  (watching; Ctrl-C exits)" in first
            # a change in either datacenter is drawn
            west_client.scale("web", 3)
            frames.until(lambda f: _desired(f) == [("east", "2"), ("west", "3")],
                         "west's new count")
            east_client.scale("web", 1)
            frames.until(lambda f: _desired(f) == [("east", "1"), ("west", "3")],
                         "east's new count")

            # east goes away (its server stopped, its data kept): reported in the frame,
            # and west keeps updating
            (member,) = east_etcd.members
            member.stop()
            gone = frames.until(lambda f: "datacenter east: unreachable: " in f,
                                "east reported")
            assert "1 of 2 datacenters answered" in gone and _desired(gone) == [("west", "3")]
            west_client.scale("web", 4)
            frames.until(lambda f: _desired(f) == [("west", "4")]
                         and "datacenter east: unreachable: " in f, "west's next count")

            # east is back: followed again, without restarting the watch
            east_etcd.restart(member)
            back = frames.until(lambda f: _desired(f) == [("east", "1"), ("west", "4")],
                                "east back", timeout=40)
            assert "unreachable" not in back and "2 of 2 datacenters answered" in back
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()  # else leaving the with block would wait for it for ever
                raise
    assert proc.returncode == 0, err


def test_watch_is_refused_with_by_host(
        tmp_path: Path, two: tuple[list[harness.EtcdCluster], list[Datacenter]]) -> None:
    sked = shutil.which("sked", path=str(Path(sys.executable).parent))
    assert sked is not None
    env = {**os.environ, "SKED_CONFIG": str(tmp_path / "config.yaml")}
    done = subprocess.run([sked, "--all-datacenters", "tasks", "--by-host", "-w"],
                          capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 1
    assert done.stderr == "sked: error: --all-datacenters: not with --by-host\n"
