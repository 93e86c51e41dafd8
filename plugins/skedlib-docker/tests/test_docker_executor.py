"""The ``docker`` executor (plugin ``skedlib-docker``) against a real, private Docker engine.

No mocks: every test that touches the engine starts real containers from the busybox
test image built by :mod:`tests.harness.dockerd`. HTTP is checked from the host with
``urllib`` (busybox ``wget`` crashes in containers). A few tests of the blob translation
need no engine at all.
"""

from __future__ import annotations

import os
import pwd
import queue
import re
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from skedlib import DockerPolicy, HostPolicy, PolicyRefused, load_policy
from skedlib.codecs import decode, encode
from skedlib.errors import SkedError
from skedlib.executors import ContainerRef, ContainerStatus, ExecutorContext, TaskRejected
from skedlib.health.checks import resolve_check, run_check
from skedlib.keys import DEFAULT_PREFIX, Keyspace
from skedlib.models import Check, Cluster, Container, Task, TaskDefinition, TaskHealth
from skedlib.plugins import get_registry, open_backend
from tests.harness.dockerd import (
    DockerEngine,
    docker_engine,
    free_port,
    free_port_pair,
    require_docker_plugin,
)

require_docker_plugin()

from skedlib_docker import (  # noqa: E402 - after the plugin check
    DockerEngineExecutor,
    DockerError,
    DockerOptions,
    DockerUnavailable,
    build_run_spec,
    container_name,
)
from skedlib_docker.spec import docker_request, parse_memory  # noqa: E402

pytestmark = [pytest.mark.timeout(120)]

__all__ = ["docker_engine"]  # the harness's fixture (imported above), used by the tests below

T = TypeVar("T")


# -- helpers ----------------------------------------------------------------------------------
def make_task(blob: dict[str, Any], *, port: int = 0, memory: int = 0, cpu_units: int = 0,
              host: str = "node-1", container: str = "main") -> tuple[Task, Container]:
    """A one-container docker task with a unique id (``t-<service>-1-0``)."""
    ctr = Container(name=container, type="docker", executor=blob, memory=memory,
                    cpu_units=cpu_units)
    service = f"svc{uuid.uuid4().hex[:8]}"
    definition = TaskDefinition(name=service, version=1, provide_port=bool(port),
                                containers=[ctr], grace_period=2 * 10**9, max_attempts=3)
    task = Task(cluster=Cluster(name="t"), task_definition=definition, service=service,
                instance=0, port=port, host=host, scheduled=True)
    return task, ctr


def agent_env(task: Task, container: Container) -> dict[str, str]:
    """What the agent passes as ``env``: the task's variables, not its own environment."""
    env = {"SKED_TASK_ID": task.id, "SKED_HOST": task.host}
    if task.port:
        env["PROVIDED_PORT"] = str(task.port)
    return env


def ref_of(task: Task, container: Container) -> ContainerRef:
    return ContainerRef(task.id, container.name)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0) -> T:
    """Poll ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def http_get(port: int, timeout: float = 15.0) -> str:
    """GET http://127.0.0.1:port/ from the host, retrying until the server answers."""
    def probe() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                return str(resp.read().decode())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
    return wait_for(f"HTTP on 127.0.0.1:{port}", probe, timeout)


def container_events(engine: DockerEngine, name: str) -> list[dict[str, Any]]:
    """The engine's events so far for the container called ``name`` (oldest first)."""
    api = engine.client().api
    until = int(time.time()) + 1
    return list(api.events(since=0, until=until, filters={"container": name}, decode=True))


def kill_signals(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """``(signal, time in ns)`` of each ``kill`` event: the signals the engine sent."""
    return [(e["Actor"]["Attributes"].get("signal", ""), int(e["timeNano"]))
            for e in events if e.get("Action") == "kill"]


def port_closed(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def make_executor(engine: DockerEngine, tmp_path: Path, host: str,
                  policy: HostPolicy | None = None, **options: str) -> DockerEngineExecutor:
    ctx = ExecutorContext(host=host, state_dir=tmp_path / "state", log_dir=tmp_path / "logs",
                          options={"docker.url": engine.url, "docker.bind_ip": "127.0.0.1",
                                   "docker.timeout": "30", **options},
                          policy=policy or HostPolicy())
    return DockerEngineExecutor(ctx)


@pytest.fixture
def make_permissive(docker_engine: DockerEngine, tmp_path: Path, host: str
                    ) -> Iterator[Callable[..., DockerEngineExecutor]]:
    """An executor whose host policy allows what a test's container asks (the default
    policy refuses host mounts, added capabilities and the host network)."""
    made: list[DockerEngineExecutor] = []

    def make(**docker: Any) -> DockerEngineExecutor:
        ex = make_executor(docker_engine, tmp_path, host,
                           HostPolicy(docker=DockerPolicy(**docker)))
        made.append(ex)
        return ex

    yield make
    for ex in made:
        for ref in ex.running():
            ex.stop(ref, 0)
        ex.close()


@pytest.fixture
def host() -> str:
    """A host name of its own per test, so tests never see each other's containers."""
    return f"node-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def executor(docker_engine: DockerEngine, tmp_path: Path,
             host: str) -> Iterator[DockerEngineExecutor]:
    ex = make_executor(docker_engine, tmp_path, host)
    try:
        yield ex
    finally:
        for ref in ex.running():
            ex.stop(ref, 0)
        ex.close()


def needs_bridge(engine: DockerEngine) -> None:
    if engine.bridge is None:
        pytest.skip("the private engine runs with --bridge=none here: ports cannot be "
                    "published (see the --net=host test)")


HTTPD = ("mkdir -p /www && echo hello-$PROVIDED_PORT > /www/index.html && "
         "exec httpd -f -p {p} -h /www")


# -- with the engine --------------------------------------------------------------------------
def test_published_port_serves_http_then_stop_removes_it(
        docker_engine: DockerEngine, executor: DockerEngineExecutor) -> None:
    needs_bridge(docker_engine)
    port = free_port()
    task, ctr = make_task({"image": docker_engine.image, "container_port": 8080,
                           "cmd": ["sh", "-c", HTTPD.format(p=8080)]}, port=port)
    ref = ref_of(task, ctr)
    executor.start(task, ctr, agent_env(task, ctr))

    assert http_get(port).strip() == f"hello-{port}"
    st = executor.status(ref)
    assert st.state == "running" and st.pid and st.started_at > 0
    assert port in executor.reserved_ports()
    assert executor.running() == [ref]

    info = docker_engine.client().api.inspect_container(
        container_name(executor.host, task.id, ctr.name))
    labels = info["Config"]["Labels"]
    assert labels["skedlib.task_id"] == task.id
    assert labels["skedlib.container"] == "main"
    assert labels["skedlib.host"] == executor.host
    assert info["HostConfig"]["PortBindings"] == {
        "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}

    executor.stop(ref, grace=1)
    assert executor.status(ref).state == "missing"
    assert executor.running() == []
    assert port not in executor.reserved_ports()
    wait_for(f"port {port} to close", lambda: port_closed(port), 5)
    executor.stop(ref, grace=1)  # idempotent


def test_exit_code_is_reported_and_cleanup_removes(executor: DockerEngineExecutor,
                                                   docker_engine: DockerEngine) -> None:
    task, ctr = make_task({"image": docker_engine.image, "cmd": ["sh", "-c", "exit 3"]})
    ref = ref_of(task, ctr)
    executor.start(task, ctr, agent_env(task, ctr))
    def exited() -> ContainerStatus | None:
        st = executor.status(ref)
        return st if st.state == "exited" else None

    st = wait_for("the container to exit", exited)
    assert st.exit_code == 3
    assert "code 3" in st.message
    assert executor.running() == [ref]  # listed until cleaned up, so an agent can clean up
    assert executor.reserved_ports() == []
    executor.cleanup(ref)
    assert executor.status(ref).state == "missing"
    assert executor.running() == []


def test_adoption_by_a_new_executor_instance(docker_engine: DockerEngine,
                                            tmp_path: Path, host: str) -> None:
    first = make_executor(docker_engine, tmp_path, host)
    task, ctr = make_task({"image": docker_engine.image, "cmd": ["sleep", "300"]}, host=host)
    ref = ref_of(task, ctr)
    first.start(task, ctr, agent_env(task, ctr))
    started = first.status(ref)
    assert started.state == "running"
    first.close()  # the agent exits; the container keeps running

    second = make_executor(docker_engine, tmp_path, host)  # the restarted agent
    other = make_executor(docker_engine, tmp_path, f"{host}-other")
    try:
        assert second.running() == [ref]
        adopted = second.status(ref)
        assert adopted.state == "running"
        assert adopted.pid == started.pid
        assert other.running() == []
        assert other.status(ref).state == "missing"

        # a retried start of the same task leaves the running container alone
        client = docker_engine.client()
        name = container_name(host, task.id, ctr.name)
        before = client.api.inspect_container(name)["Id"]
        second.start(task, ctr, agent_env(task, ctr))
        assert client.api.inspect_container(name)["Id"] == before

        second.stop(ref, grace=0)
        assert second.status(ref).state == "missing"
        # grace 0: SIGKILL follows SIGTERM at once (sleep ignores SIGTERM as pid 1); the
        # engine's default would wait 10 s. Timed by the engine, between its own two steps.
        (term, t_term), (kill, t_kill) = kill_signals(container_events(docker_engine, name))
        assert (term, kill) == ("15", "9") and t_kill - t_term < 5 * 10**9
        assert second.running() == []
    finally:
        for ex in (second, other):
            for r in ex.running():
                ex.stop(r, 0)
            ex.close()


def test_a_docker_check_runs_its_command_inside_the_container(
        executor: DockerEngineExecutor, docker_engine: DockerEngine) -> None:
    """Sked's ``docker`` check: the command runs in the task's container (the file it
    reads exists only there); exit statuses read as a script check's."""
    task, ctr = make_task({"image": docker_engine.image,
                           "cmd": "sh -c 'echo inside > /tmp/mark; exec sleep 300'"})
    ref = ref_of(task, ctr)
    executor.start(task, ctr, agent_env(task, ctr))
    code, out = wait_for("the mark file", lambda: (
        r := executor.exec_check(ref, "cat /tmp/mark", 10)) and r[0] == 0 and r)
    assert (code, out.strip()) == (0, "inside")
    assert executor.exec_check(ref, "echo warn; exit 1", 10)[0] == 1
    check = Check(docker="test -f /tmp/mark", interval="1s")
    resolved = resolve_check(check, ctr.name, 0, 0, "docker")
    result = run_check(resolved, {"SKED_TASK_ID": task.id},
                       lambda _e, r, c, t: executor.exec_check(r, c, t))
    assert result.status == "passing"
    absent = Check(docker="test -f /nope || exit 2")  # 1 would be a warning
    gone = run_check(resolve_check(absent, ctr.name, 0, 0, "docker"), {"SKED_TASK_ID": task.id},
                     lambda _e, r, c, t: executor.exec_check(r, c, t))
    assert gone.status == "critical"


def test_a_stale_container_of_the_task_is_replaced(executor: DockerEngineExecutor,
                                                   docker_engine: DockerEngine) -> None:
    task, ctr = make_task({"image": docker_engine.image, "cmd": ["sh", "-c", "exit 0"]})
    ref = ref_of(task, ctr)
    executor.start(task, ctr, agent_env(task, ctr))
    wait_for("exit", lambda: executor.status(ref).state == "exited")
    executor.start(task, ctr, agent_env(task, ctr))  # the old exited container is replaced
    wait_for("exit again", lambda: executor.status(ref).state == "exited")
    assert executor.running() == [ref]


def test_env_and_provided_port_substitution(executor: DockerEngineExecutor,
                                            docker_engine: DockerEngine,
                                            tmp_path: Path) -> None:
    port = free_port()
    script = ('echo "env=$PORT_X url=$URL greet=$GREETING provided=$PROVIDED_PORT '
              'task=$SKED_TASK_ID ctr=$SKED_CONTAINER arg=$0"; '
              'echo "$PORT_X" > /tmp/x; sleep 300')
    task, ctr = make_task({"image": docker_engine.image,
                           "cmd": ["sh", "-c", script, "a$PROVIDED_PORT"],
                           "env": ["PORT_X=$PROVIDED_PORT", "URL=http://h:${PROVIDED_PORT}/",
                                   "GREETING=hi there"],
                           "work_dir": "/tmp"}, port=port)
    ref = ref_of(task, ctr)
    executor.start(task, ctr, agent_env(task, ctr))
    client = docker_engine.client()
    name = container_name(executor.host, task.id, ctr.name)
    expected = (f"env={port} url=http://h:{port}/ greet=hi there provided={port} "
                f"task={task.id} ctr=main arg=a{port}")
    logs = wait_for("the echo", lambda: (
        out := client.api.logs(name).decode()) and "env=" in out and out)
    assert logs.strip() == expected
    code, out = client.containers.get(name).exec_run(["cat", "/tmp/x"])
    assert code == 0 and out.decode().strip() == str(port)
    assert client.api.inspect_container(name)["Config"]["WorkingDir"] == "/tmp"

    executor.stop(ref, grace=0)
    kept = (tmp_path / "logs" / task.id / "main.log").read_text()
    assert expected in kept  # the output is kept in the log directory at removal
    # ... readable by the agent's user only (docs/security.md)
    assert stat.S_IMODE(os.stat(tmp_path / "logs" / task.id / "main.log").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "logs" / task.id).st_mode) == 0o700


def test_limits_and_supported_flags(make_permissive: Callable[..., DockerEngineExecutor],
                                    docker_engine: DockerEngine) -> None:
    executor = make_permissive(capabilities=["NET_ADMIN"])
    task, ctr = make_task({"image": docker_engine.image,
                           "cmd": ["sh", "-c", "id -u; hostname; touch /x 2>/dev/null || echo ro; "
                                   "touch /scratch/y && echo tmpfs-ok; sleep 300"],
                           "flags": ["--cap-add=NET_ADMIN", "--cap-drop", "MKNOD",
                                     "--read-only", "--user=65534", "--hostname=skedbox",
                                     "--tmpfs=/scratch:mode=1777", "--init",
                                     "--add-host=db:10.1.2.3", "-d"]},
                          memory=64, cpu_units=512)
    ref = ref_of(task, ctr)
    executor.start(task, ctr, agent_env(task, ctr))
    client = docker_engine.client()
    name = container_name(executor.host, task.id, ctr.name)
    info = client.api.inspect_container(name)
    hc = info["HostConfig"]
    assert hc["Memory"] == 64 * 1024 * 1024
    assert hc["NanoCpus"] == 500_000_000
    assert hc["CapAdd"] == ["NET_ADMIN"] and hc["CapDrop"] == ["MKNOD"]
    assert hc["ReadonlyRootfs"] is True
    assert hc["Init"] is True
    assert hc["ExtraHosts"] == ["db:10.1.2.3"]
    assert info["Config"]["User"] == "65534"
    logs = wait_for("the output", lambda: (
        out := client.api.logs(name).decode()) and "tmpfs-ok" in out and out)
    assert logs.split() == ["65534", "skedbox", "ro", "tmpfs-ok"]

    # --init: docker-init forwards SIGTERM, so sleep ends on it (docker-init exits with
    # 128 + 15) instead of being killed after the grace period
    executor.stop(ref, grace=20)
    assert executor.status(ref).state == "missing"
    events = container_events(docker_engine, name)
    assert [s for s, _ in kill_signals(events)] == ["15"]
    (die,) = [e for e in events if e.get("Action") == "die"]
    assert die["Actor"]["Attributes"]["exitCode"] == "143"


def test_net_host_container_listens_on_the_task_port(
        make_permissive: Callable[..., DockerEngineExecutor],
        docker_engine: DockerEngine) -> None:
    executor = make_permissive(host_network=True)
    port = free_port()
    task, ctr = make_task({"image": docker_engine.image, "container_port": 8080,
                           "cmd": ["sh", "-c", HTTPD.format(p="$PROVIDED_PORT")],
                           "flags": ["--net=host", "--memory=32m", "--cpus=0.25"]}, port=port)
    ref = ref_of(task, ctr)
    executor.start(task, ctr, agent_env(task, ctr))
    assert http_get(port).strip() == f"hello-{port}"
    assert executor.reserved_ports() == [port]
    hc = docker_engine.client().api.inspect_container(
        container_name(executor.host, task.id, ctr.name))["HostConfig"]
    assert hc["NetworkMode"] == "host"
    assert hc["Memory"] == 32 * 1024 * 1024 and hc["NanoCpus"] == 250_000_000
    executor.stop(ref, grace=0)
    wait_for(f"port {port} to close", lambda: port_closed(port), 5)


def test_extra_port_mappings_and_volume(make_permissive: Callable[..., DockerEngineExecutor],
                                        docker_engine: DockerEngine,
                                        tmp_path: Path) -> None:
    needs_bridge(docker_engine)
    executor = make_permissive(mounts=[str(tmp_path / "www")])
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("from-a-volume\n")
    port, extra = free_port_pair()
    task, ctr = make_task({"image": docker_engine.image, "container_port": 8080,
                           "ports": [f"{extra}:9090"],
                           "volumes": [f"{www}:/www:ro"],
                           "cmd": ["sh", "-c", "httpd -p 9090 -h /www; "
                                   "exec httpd -f -p 8080 -h /www"]}, port=port)
    executor.start(task, ctr, agent_env(task, ctr))
    assert http_get(port) == "from-a-volume\n"
    assert http_get(extra) == "from-a-volume\n"
    assert executor.reserved_ports() == sorted([port, extra])
    executor.stop(ref_of(task, ctr), grace=0)


def test_exits_are_notified_but_not_stops(executor: DockerEngineExecutor,
                                          docker_engine: DockerEngine) -> None:
    exits: queue.Queue[tuple[ContainerRef, ContainerStatus]] = queue.Queue()
    assert executor.notify_exits(lambda ref, st: exits.put((ref, st))) is True
    stopped, s_ctr = make_task({"image": docker_engine.image, "cmd": ["sleep", "300"]},
                               container="stopped")
    executor.start(stopped, s_ctr, agent_env(stopped, s_ctr))
    dying, d_ctr = make_task({"image": docker_engine.image,
                              "cmd": ["sh", "-c", "sleep 0.5; exit 5"]}, container="dying")
    executor.start(dying, d_ctr, agent_env(dying, d_ctr))
    executor.stop(ref_of(stopped, s_ctr), grace=0)

    ref, st = exits.get(timeout=10)
    assert ref == ref_of(dying, d_ctr)
    assert st.state == "exited" and st.exit_code == 5
    with pytest.raises(queue.Empty):  # the stopped one is not reported
        exits.get(timeout=1)
    executor.close()
    assert executor._events_thread is None


def test_missing_image_is_rejected_with_its_name(executor: DockerEngineExecutor) -> None:
    task, ctr = make_task({"image": "skedlib-test/does-not-exist:42", "cmd": ["true"]})
    with pytest.raises(TaskRejected, match=r"^container main: docker image "
                                           r"'skedlib-test/does-not-exist:42' is not present"):
        executor.start(task, ctr, agent_env(task, ctr))
    assert executor.running() == []


def test_missing_command_is_rejected(executor: DockerEngineExecutor,
                                     docker_engine: DockerEngine) -> None:
    task, ctr = make_task({"image": docker_engine.image, "cmd": ["/no/such/program"]})
    with pytest.raises(TaskRejected, match="/no/such/program"):
        executor.start(task, ctr, agent_env(task, ctr))
    assert executor.running() == []  # the failed container was removed


def test_taken_port_is_rejected(executor: DockerEngineExecutor,
                                docker_engine: DockerEngine) -> None:
    needs_bridge(docker_engine)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        task, ctr = make_task({"image": docker_engine.image, "container_port": 8080,
                               "cmd": ["sleep", "300"]}, port=port)
        with pytest.raises(TaskRejected, match=str(port)):
            executor.start(task, ctr, agent_env(task, ctr))
    assert executor.running() == []


def test_unsupported_flags_are_rejected_before_anything_runs(
        executor: DockerEngineExecutor, docker_engine: DockerEngine) -> None:
    task, ctr = make_task({"image": docker_engine.image, "cmd": ["true"],
                           "flags": ["--foo=bar"]})
    with pytest.raises(TaskRejected, match=r"docker flag --foo is not supported; supported: "
                                           r".*--memory"):
        executor.start(task, ctr, agent_env(task, ctr))
    task, ctr = make_task({"image": docker_engine.image, "cmd": ["true"],
                           "flags": ["--restart=always"]})
    with pytest.raises(TaskRejected, match=r"--restart .*agent restarts"):
        executor.start(task, ctr, agent_env(task, ctr))
    assert executor.running() == []


def test_unknown_containers_are_missing_and_stop_is_a_no_op(
        executor: DockerEngineExecutor) -> None:
    ref = ContainerRef("t-nothing-1-0", "main")
    assert executor.status(ref).state == "missing"
    executor.stop(ref, 0)
    executor.cleanup(ref)


def test_the_plugin_registers_the_docker_executor(docker_engine: DockerEngine,
                                                  tmp_path: Path) -> None:
    factory = get_registry().executor_factory("docker")
    ctx = ExecutorContext(host="node-x", state_dir=tmp_path, log_dir=tmp_path,
                          options={"docker.url": docker_engine.url})
    ex = factory(ctx)
    try:
        assert isinstance(ex, DockerEngineExecutor) and ex.name == "docker"
        assert ex.running() == []
    finally:
        ex.close()


# -- the host policy -----------------------------------------------------------------------------
def _no_container(engine: DockerEngine, executor: DockerEngineExecutor, task: Task,
                  ctr: Container) -> bool:
    """Nothing was created for the container (not even a stopped one)."""
    name = container_name(executor.host, task.id, ctr.name)
    return not engine.client().api.containers(all=True, filters={"name": name})


def _hc(engine: DockerEngine, executor: DockerEngineExecutor, task: Task,
        ctr: Container) -> dict[str, Any]:
    info: dict[str, Any] = engine.client().api.inspect_container(
        container_name(executor.host, task.id, ctr.name))
    return info


# (what the blob adds, the policy that allows it, the rule refusing it by default, what
# the engine shows once allowed)
DANGEROUS: list[tuple[str, Callable[[DockerEngine, Path], dict[str, Any]],
                      Callable[[DockerEngine, Path], dict[str, Any]], str,
                      Callable[[dict[str, Any], DockerEngine, Path], bool]]] = [
    ("privileged",
     lambda e, t: {"flags": ["--privileged"]}, lambda e, t: {"privileged": True},
     "docker.privileged", lambda i, e, t: i["HostConfig"]["Privileged"] is True),
    ("host mount",
     lambda e, t: {"volumes": [f"{t}:/host:ro"]}, lambda e, t: {"mounts": [str(t)]},
     "docker.mounts", lambda i, e, t: i["HostConfig"]["Binds"] == [f"{t}:/host:ro"]),
    ("root mount",
     lambda e, t: {"volumes": ["/:/host"]}, lambda e, t: {"mounts": ["/"],
                                                        "docker_socket": True},
     "docker.docker_socket", lambda i, e, t: i["HostConfig"]["Binds"] == ["/:/host"]),
    ("docker socket",
     lambda e, t: {"volumes": [f"{e.socket}:/var/run/docker.sock"]},
     lambda e, t: {"mounts": [str(e.socket.parent)], "docker_socket": True},
     "docker.docker_socket",
     lambda i, e, t: i["HostConfig"]["Binds"] == [f"{e.socket}:/var/run/docker.sock"]),
    ("cap-add ALL",
     lambda e, t: {"flags": ["--cap-add=ALL"]}, lambda e, t: {"capabilities": ["ALL"]},
     "docker.capabilities", lambda i, e, t: i["HostConfig"]["CapAdd"] == ["ALL"]),
    ("cap-add SYS_ADMIN",
     lambda e, t: {"flags": ["--cap-add", "SYS_ADMIN"]},
     lambda e, t: {"capabilities": ["SYS_ADMIN"]},
     "docker.capabilities", lambda i, e, t: i["HostConfig"]["CapAdd"] == ["SYS_ADMIN"]),
    ("host network",
     lambda e, t: {"flags": ["--network=host"]}, lambda e, t: {"host_network": True},
     "docker.host_network", lambda i, e, t: i["HostConfig"]["NetworkMode"] == "host"),
    ("host network by Sked's net field",
     lambda e, t: {"net": "host"}, lambda e, t: {"host_network": True},
     "docker.host_network", lambda i, e, t: i["HostConfig"]["NetworkMode"] == "host"),
    ("host pid",
     lambda e, t: {"flags": ["--pid=host"]}, lambda e, t: {"host_pid": True},
     "docker.host_pid", lambda i, e, t: i["HostConfig"]["PidMode"] == "host"),
    ("host ipc",
     lambda e, t: {"flags": ["--ipc=host"]}, lambda e, t: {"host_ipc": True},
     "docker.host_ipc", lambda i, e, t: i["HostConfig"]["IpcMode"] == "host"),
    ("device",
     lambda e, t: {"flags": ["--device=/dev/null:/dev/xnull"]},
     lambda e, t: {"devices": ["/dev/null"]}, "docker.devices",
     lambda i, e, t: i["HostConfig"]["Devices"][0]["PathOnHost"] == "/dev/null"),
    ("user root",
     lambda e, t: {"flags": ["--user=0"]}, lambda e, t: {"root": True},
     "docker.root", lambda i, e, t: i["Config"]["User"] == "0"),
    ("user root by name",
     lambda e, t: {"flags": ["-u", "root:root"]}, lambda e, t: {"root": True},
     "docker.root", lambda i, e, t: i["Config"]["User"] == "root:root"),
]


@pytest.mark.parametrize(("blob_extra", "allowing", "rule", "shows"),
                         [case[1:] for case in DANGEROUS], ids=[c[0] for c in DANGEROUS])
def test_each_dangerous_option_is_refused_by_default_and_allowed_by_the_policy(
        executor: DockerEngineExecutor, make_permissive: Callable[..., DockerEngineExecutor],
        docker_engine: DockerEngine, tmp_path: Path,
        blob_extra: Callable[[DockerEngine, Path], dict[str, Any]],
        allowing: Callable[[DockerEngine, Path], dict[str, Any]], rule: str,
        shows: Callable[[dict[str, Any], DockerEngine, Path], bool]) -> None:
    task, ctr = make_task({"image": docker_engine.image, "cmd": ["sleep", "300"],
                           **blob_extra(docker_engine, tmp_path)})
    expected = f"container main: refused by the host policy (default), rule {rule}: "
    with pytest.raises(PolicyRefused, match=re.escape(expected)):
        executor.admit(task, ctr)  # what the agent asks before starting any container
    with pytest.raises(PolicyRefused, match=re.escape(expected)):
        executor.start(task, ctr, agent_env(task, ctr))
    assert _no_container(docker_engine, executor, task, ctr)  # nothing half-started

    allowed = make_permissive(**allowing(docker_engine, tmp_path))
    allowed.admit(task, ctr)
    try:
        allowed.start(task, ctr, agent_env(task, ctr))
    except DockerError as exc:
        # the policy let it through to the engine; a machine that is itself confined
        # (a container without every capability) cannot grant all of them
        assert "operation not permitted" in str(exc) and rule in (
            "docker.privileged", "docker.capabilities")
        return
    info = _hc(docker_engine, allowed, task, ctr)
    assert info["State"]["Running"] is True
    assert shows(info, docker_engine, tmp_path)


def test_ports_are_published_on_loopback_by_default(docker_engine: DockerEngine,
                                                    tmp_path: Path, host: str) -> None:
    needs_bridge(docker_engine)
    assert DockerOptions.from_mapping({}).bind_ip == "127.0.0.1"
    ctx = ExecutorContext(host=host, state_dir=tmp_path / "s", log_dir=tmp_path / "l",
                          options={"docker.url": docker_engine.url})  # no bind_ip given
    executor = DockerEngineExecutor(ctx)
    try:
        port, extra = free_port_pair()
        task, ctr = make_task({"image": docker_engine.image, "container_port": 8080,
                               "ports": [f"{extra}:9090"], "cmd": ["sleep", "300"]},
                              port=port)
        executor.start(task, ctr, agent_env(task, ctr))
        bindings = _hc(docker_engine, executor, task, ctr)["HostConfig"]["PortBindings"]
        assert bindings == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}],
                            "9090/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(extra)}]}

        # a task naming every interface itself is refused unless the policy lists it
        wide, wide_ctr = make_task({"image": docker_engine.image, "cmd": ["sleep", "300"],
                                    "ports": [f"0.0.0.0:{free_port()}:80"]})
        with pytest.raises(PolicyRefused, match=r"rule docker.publish_addresses: a port "
                                                r"published on 0.0.0.0"):
            executor.start(wide, wide_ctr, agent_env(wide, wide_ctr))
        assert _no_container(docker_engine, executor, wide, wide_ctr)
    finally:
        for ref in executor.running():
            executor.stop(ref, 0)
        executor.close()


def test_images_outside_the_allowlist_are_refused(
        docker_engine: DockerEngine, make_permissive: Callable[..., DockerEngineExecutor]
        ) -> None:
    refusing = make_permissive(registries=["registry.example.com"])
    task, ctr = make_task({"image": docker_engine.image, "cmd": ["sleep", "300"]})
    with pytest.raises(PolicyRefused, match=r"rule docker.images: image "
                                            r"'skedlib-test/busybox:1' \(docker.io/"):
        refusing.start(task, ctr, agent_env(task, ctr))
    assert _no_container(docker_engine, refusing, task, ctr)
    allowing = make_permissive(images=["docker.io/skedlib-test/*"])
    allowing.start(task, ctr, agent_env(task, ctr))
    assert _hc(docker_engine, allowing, task, ctr)["State"]["Running"] is True


def test_run_as_gives_containers_the_users_numbers(docker_engine: DockerEngine,
                                                   tmp_path: Path, host: str) -> None:
    nobody = pwd.getpwnam("nobody")
    policy = HostPolicy(run_as="nobody", users=["4321"],
                        docker=DockerPolicy(image_user=["*/keeps:*"]))
    executor = make_executor(docker_engine, tmp_path, host, policy)
    try:
        task, ctr = make_task({"image": docker_engine.image,
                               "cmd": ["sh", "-c", "id -u; sleep 300"]})
        executor.start(task, ctr, agent_env(task, ctr))
        name = container_name(executor.host, task.id, ctr.name)
        assert _hc(docker_engine, executor, task, ctr)["Config"]["User"] == \
            f"{nobody.pw_uid}:{nobody.pw_gid}"
        wait_for("the container's uid", lambda: docker_engine.client().api.logs(name)
                 .decode().split() == [str(nobody.pw_uid)])
        # another --user only from the users allowlist; root never by default
        other, other_ctr = make_task({"image": docker_engine.image, "cmd": ["sleep", "1"],
                                      "flags": ["--user=www-data"]})
        with pytest.raises(PolicyRefused, match="rule users: --user=www-data"):
            executor.start(other, other_ctr, agent_env(other, other_ctr))
        root, root_ctr = make_task({"image": docker_engine.image, "cmd": ["sleep", "1"],
                                    "flags": ["--user=0:0"]})
        with pytest.raises(PolicyRefused, match=r"rule docker\.root"):
            executor.start(root, root_ctr, agent_env(root, root_ctr))
        listed, listed_ctr = make_task({"image": docker_engine.image, "cmd": ["sleep", "300"],
                                        "flags": ["--user=4321:4321"]})
        executor.start(listed, listed_ctr, agent_env(listed, listed_ctr))
        assert _hc(docker_engine, executor, listed, listed_ctr)["Config"]["User"] == \
            "4321:4321"
    finally:
        for ref in executor.running():
            executor.stop(ref, 0)
        executor.close()


# -- end to end, with the agent ----------------------------------------------------------------
def test_the_agent_runs_adopts_and_stops_a_docker_task(docker_engine: DockerEngine,
                                                       tmp_path: Path, host: str) -> None:
    """Tasks written into the store by hand are run by an in-process agent; a task whose
    image does not exist is rejected without touching the others; across an agent restart
    the running task is adopted (not restarted) and the one whose key went away meanwhile
    is removed; a task stops when its key goes."""
    needs_bridge(docker_engine)
    from skedlib.agent import Agent, AgentConfig

    backend = open_backend(f"sqlite://{tmp_path}/store.db")
    keys = Keyspace(DEFAULT_PREFIX)
    config = AgentConfig(host=host, state_dir=tmp_path / "agent", executors=["docker"],
                         executor_options={"docker": {"url": docker_engine.url,
                                                      "bind_ip": "127.0.0.1"}},
                         lease_ttl=2.0, check_failures=2)
    observer = make_executor(docker_engine, tmp_path, host)
    web = Container(name="web", type="docker",
                    executor={"image": docker_engine.image, "container_port": 8080,
                              "cmd": ["sh", "-c", HTTPD.format(p=8080)]},
                    checks=[Check(http="http://127.0.0.1:$PROVIDED_PORT/", interval="300ms",
                                  timeout="250ms")])

    def issue(service: str, container: Container, provide_port: bool = False) -> Task:
        definition = TaskDefinition(name=service, version=1, provide_port=provide_port,
                                    containers=[container], grace_period=10**9,
                                    max_attempts=3)
        task = Task(cluster=Cluster(name="default"), task_definition=definition,
                    service=service, instance=0, host=host, scheduled=True)
        value = encode(task)
        backend.put(keys.host_task(host, task.id), value)
        backend.put(keys.task(task.id), value)
        return task

    def stored(task: Task) -> Task:
        kv = backend.get(keys.task(task.id))
        assert kv is not None
        return decode(kv.value, Task)

    def withdraw(task: Task) -> None:
        backend.delete(keys.host_task(host, task.id))
        backend.delete(keys.task(task.id))

    agents: list[Agent] = []

    def start_agent() -> Agent:
        agent = Agent(backend, config)
        agents.append(agent)
        agent.start()
        assert agent.wait_ready(15)
        return agent

    def healthy(task: Task) -> Callable[[], TaskHealth | None]:
        def probe() -> TaskHealth | None:
            kv = backend.get(keys.task_health(task.id))
            health = decode(kv.value, TaskHealth) if kv else None
            return health if health is not None and health.healthy else None
        return probe

    try:
        first = start_agent()
        task = issue("web", web, provide_port=True)
        # --init: sleep ends on SIGTERM (the agent that stops it after its key went away
        # no longer knows the task's grace period, so it allows the default 60 s)
        idle = issue("idle", Container(name="main", type="docker", executor={
            "image": docker_engine.image, "cmd": ["sleep", "300"], "flags": ["--init"]}))
        wait_for("the task to be healthy", healthy(task), 30)
        wait_for("the idle task to be healthy", healthy(idle), 30)
        port = stored(task).port
        assert port and http_get(port).strip() == f"hello-{port}"
        ref, idle_ref = ContainerRef(task.id, "web"), ContainerRef(idle.id, "main")
        assert observer.running() == sorted([ref, idle_ref])
        name = container_name(host, task.id, "web")
        container_id = docker_engine.client().api.inspect_container(name)["Id"]

        # an image that does not exist: rejected with its name, the others untouched
        missing = issue("missing", Container(name="app", type="docker", executor={
            "image": "skedlib-test/does-not-exist:42", "cmd": ["true"]}))
        rejected = wait_for("the rejection", lambda: (t := stored(missing)).rejected and t)
        assert rejected.reject_reason == (
            f"container app: docker image 'skedlib-test/does-not-exist:42' is not present on "
            f"host {host} (pulling is off: set the executor option docker.pull=true)")
        assert host in rejected.rejected_hosts
        assert wait_for("still healthy", healthy(task)).attempts == 0
        assert docker_engine.client().api.inspect_container(name)["Id"] == container_id

        first.stop()  # tasks keep running; the next agent adopts them
        assert observer.status(ref).state == "running"
        withdraw(idle)  # its key goes while no agent runs
        start_agent()
        wait_for("the withdrawn task's container to be removed",
                 lambda: observer.running() == [ref], 15)
        time.sleep(1.0)  # long enough for a wrong restart to show up
        assert wait_for("healthy again", healthy(task), 15).attempts == 0
        assert docker_engine.client().api.inspect_container(name)["Id"] == container_id

        withdraw(task)
        wait_for("the container to be removed", lambda: observer.running() == [], 15)
        wait_for(f"port {port} to close", lambda: port_closed(port), 5)
    finally:
        for agent in agents:
            agent.stop(stop_tasks=True)
        for r in observer.running():
            observer.stop(r, 0)
        observer.close()
        backend.close()


def test_the_agent_rejects_what_its_policy_refuses_before_any_container_starts(
        docker_engine: DockerEngine, tmp_path: Path, host: str) -> None:
    """A two-container task whose second container asks for --privileged is rejected
    naming the rule, and its harmless first container was never created either."""
    from skedlib.agent import Agent, AgentConfig

    backend = open_backend(f"sqlite://{tmp_path}/store.db")
    keys = Keyspace(DEFAULT_PREFIX)
    policy_file = tmp_path / "policy.yml"
    policy_file.write_text("docker:\n  capabilities: [NET_ADMIN]\n")
    config = AgentConfig(host=host, state_dir=tmp_path / "agent", executors=["docker"],
                         executor_options={"docker": {"url": docker_engine.url}},
                         lease_ttl=2.0, host_policy=load_policy(policy_file))
    observer = make_executor(docker_engine, tmp_path, host)
    side = Container(name="side", type="docker",
                     executor={"image": docker_engine.image, "cmd": ["sleep", "300"],
                               "flags": ["--cap-add=NET_ADMIN"]})
    root = Container(name="root", type="docker",
                     executor={"image": docker_engine.image, "cmd": ["sleep", "300"],
                               "flags": ["--privileged"]})
    definition = TaskDefinition(name="both", version=1, containers=[side, root],
                                grace_period=10**9, max_attempts=3)
    task = Task(cluster=Cluster(name="default"), task_definition=definition,
                service="both", instance=0, host=host, scheduled=True)
    agent = Agent(backend, config)
    try:
        agent.start()
        assert agent.wait_ready(15)
        backend.put(keys.host_task(host, task.id), encode(task))
        backend.put(keys.task(task.id), encode(task))

        def rejected() -> Task | None:
            kv = backend.get(keys.task(task.id))
            stored = decode(kv.value, Task) if kv else None
            return stored if stored is not None and stored.rejected else None

        found = wait_for("the rejection", rejected)
        assert found.reject_reason == (
            f"container root: refused by the host policy ({policy_file}), rule "
            "docker.privileged: a privileged container is root on the host")
        assert host in found.rejected_hosts
        assert observer.running() == []  # not even the allowed container was created
    finally:
        agent.stop(stop_tasks=True)
        for r in observer.running():
            observer.stop(r, 0)
        observer.close()
        backend.close()


# -- without an engine ------------------------------------------------------------------------
def test_an_unreachable_engine_raises_a_sked_error(tmp_path: Path) -> None:
    ctx = ExecutorContext(host="h", state_dir=tmp_path, log_dir=tmp_path,
                          options={"docker.url": f"unix://{tmp_path}/nothing.sock",
                                   "docker.timeout": "2"})
    ex = DockerEngineExecutor(ctx)
    with pytest.raises(DockerUnavailable, match=r"nothing\.sock") as info:
        ex.status(ContainerRef("t-a-1-0", "main"))
    assert isinstance(info.value, SkedError)
    task, ctr = make_task({"image": "x", "flags": ["--bogus"]})
    with pytest.raises(TaskRejected):  # refused before the engine is contacted
        ex.start(task, ctr, agent_env(task, ctr))


def test_an_engine_that_does_not_answer_times_out(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(16)  # accepts connections (the kernel does) but never answers
        ctx = ExecutorContext(host="h", state_dir=tmp_path, log_dir=tmp_path,
                              options={"docker.url": f"unix://{path}", "docker.timeout": "1"})
        ex = DockerEngineExecutor(ctx)
        # run in a thread: without the timeout the call would never return
        outcome: queue.Queue[Exception | None] = queue.Queue()

        def call() -> None:
            try:
                ex.running()
            except Exception as exc:  # handed to the test thread
                outcome.put(exc)
            else:
                outcome.put(None)

        threading.Thread(target=call, daemon=True).start()
        error = outcome.get(timeout=60)
        assert isinstance(error, DockerUnavailable) and "mute.sock" in str(error)
        assert error.__cause__ is not None  # the SDK's error, chained
        ex.close()


def test_blob_translation() -> None:
    task, ctr = make_task({"image": "app:1", "container_port": 80, "entry": "/bin/sh -c",
                           "cmd": ["run $PROVIDED_PORT"],
                           "ports": ["5000:5000", "0.0.0.0:5353:53/udp"],
                           "env": ["A=1", "B=x=y"], "volumes": ["/srv:/data:ro", "named:/v"],
                           "flags": ["-m", "1g", "--cpus=2", "--network=backend",
                                     "--privileged", "-u", "app", "--shm-size=64m"]},
                          port=20000, memory=100, cpu_units=256)
    spec = build_run_spec(task, ctr, {"PROVIDED_PORT": "20000"}, host="h1",
                          bind_ip="127.0.0.1")
    kw = spec.create_kwargs()
    assert kw["entrypoint"] == ["/bin/sh", "-c"] and kw["command"] == ["run 20000"]
    assert kw["ports"] == {"80/tcp": [("127.0.0.1", 20000)],
                           "5000/tcp": [("127.0.0.1", 5000)],
                           "53/udp": [("0.0.0.0", 5353)]}
    assert kw["volumes"] == ["/srv:/data:ro", "named:/v"]
    assert kw["environment"] == ["A=1", "B=x=y", "PROVIDED_PORT=20000", "SKED_CONTAINER=main"]
    assert kw["mem_limit"] == 1 << 30  # the flag wins over the definition's 100 MiB
    assert kw["nano_cpus"] == 2_000_000_000
    assert kw["network_mode"] == "backend" and kw["privileged"] is True
    assert kw["user"] == "app" and kw["shm_size"] == 64 << 20
    assert spec.host_ports == [5000, 5353, 20000]
    assert spec.labels["skedlib.ports"] == "5000,5353,20000"
    assert spec.name == "sked-t-" + task.service + "-1-0-main-h1"

    # limits from the definition when no flag is given
    task2, ctr2 = make_task({"image": "app:1"}, memory=100, cpu_units=256)
    kw2 = build_run_spec(task2, ctr2, {}, host="h1").create_kwargs()
    assert kw2["mem_limit"] == 100 << 20 and kw2["nano_cpus"] == 250_000_000


@pytest.mark.parametrize(("blob", "message"), [
    ({"cmd": ["x"]}, "docker executor: Object missing required field `image`"),
    ({"image": "a", "cmd": {"x": 1}}, "docker executor: .*field cmd"),
    ({"image": "a", "cmd": "sh -c 'unclosed"}, "docker cmd .*No closing quotation"),
    ({"image": "a", "net_alias": "web"}, "net_alias 'web' needs a network"),
    ({"image": " "}, "needs an image"),
    ({"image": "a", "ports": ["5000"]}, "host port is required"),
    ({"image": "a", "ports": ["70000:80"]}, "not a port"),
    ({"image": "a", "ports": ["5000:80/icmp"]}, "protocol"),
    ({"image": "a", "ports": ["5000:80", "5000:81"]}, "mapped twice"),
    ({"image": "a", "volumes": ["/only-one"]}, "HOST:CONTAINER"),
    ({"image": "a", "volumes": ["/a:relative"]}, "must be absolute"),
    ({"image": "a", "env": ["NOVALUE"]}, "KEY=VALUE"),
    ({"image": "a", "flags": ["--memory=lots"]}, "not a size"),
    ({"image": "a", "flags": ["--cpus=-1"]}, "positive"),
    ({"image": "a", "flags": ["--memory"]}, "needs a value"),
    ({"image": "a", "flags": ["--rm"]}, "removes containers itself"),
    ({"image": "a", "flags": ["--name=x"]}, "names containers"),
    ({"image": "a", "flags": ["-it"]}, "detached"),
    ({"image": "a", "flags": ["host"]}, "not a flag"),
    ({"image": "a", "flags": ["--privileged=maybe"]}, "boolean"),
    ({"image": "a", "cmd": ["echo", "$PROVIDED_PORT"]}, "no port"),
])
def test_bad_blobs_are_rejected(blob: dict[str, Any], message: str) -> None:
    task, ctr = make_task(blob)
    with pytest.raises(TaskRejected, match=message) as info:
        build_run_spec(task, ctr, {}, host="h")
    assert str(info.value).startswith("container main: ")  # which container of the task


def test_sked_blob_fields() -> None:
    """Sked's docker blob as its Go code wrote it: cmd as one string (split as a shell
    would, run without one; Sked itself never passed it to docker run), null lists,
    net, net_alias and volume_driver."""
    task, ctr = make_task({"image": "app:1", "cmd": "serve --port $PROVIDED_PORT 'a b'",
                           "entry": "", "env": None, "ports": None, "volumes": None,
                           "flags": None, "work_dir": "", "net": "backend",
                           "net_alias": "web", "volume_driver": "local"}, port=20000)
    spec = build_run_spec(task, ctr, {"PROVIDED_PORT": "20000"}, host="h1")
    kw = spec.create_kwargs()
    assert kw["command"] == ["serve", "--port", "20000", "a b"]
    assert kw["network"] == "backend" and "network_mode" not in kw
    assert kw["networking_config"] == {"backend": {"Aliases": ["web"]}}
    assert kw["volume_driver"] == "local"
    # an empty cmd (Go's zero value) is the image's own command
    task2, ctr2 = make_task({"image": "app:1", "cmd": "", "net": "", "net_alias": ""})
    kw2 = build_run_spec(task2, ctr2, {}, host="h1").create_kwargs()
    assert "command" not in kw2 and "network_mode" not in kw2
    # a --network flag wins over net (Sked put the flags after --net)
    task3, ctr3 = make_task({"image": "app:1", "net": "a", "flags": ["--network=b"]})
    assert build_run_spec(task3, ctr3, {}, host="h1").network_mode == "b"


@pytest.mark.parametrize(("blob", "allowing", "rule"), [
    ({"net": "host"}, {"host_network": True}, "docker.host_network"),
    ({"net": "container:other"}, {"container_namespaces": True},
     "docker.container_namespaces"),
    ({"volume_driver": "rexray"}, {"volume_drivers": ["rexray"]}, "docker.volume_drivers"),
])
def test_sked_fields_go_through_the_host_policy(blob: dict[str, Any],
                                                allowing: dict[str, Any], rule: str) -> None:
    task, ctr = make_task({"image": "app:1", **blob})
    request = docker_request(build_run_spec(task, ctr, {}, host="h1"), bind_ip="127.0.0.1")
    with pytest.raises(PolicyRefused, match=re.escape(f"rule {rule}")):
        HostPolicy().check_docker(request)
    HostPolicy(docker=DockerPolicy(**allowing)).check_docker(request)


def test_names_are_docker_safe_and_distinct() -> None:
    assert container_name("node-1", "c-web-3-0", "app") == "sked-c-web-3-0-app-node-1"
    odd = container_name("höst", "c-wéb-3-0", "a:b")
    assert odd.startswith("sked-c-w_b-3-0-a_b-h_st-")
    assert odd != container_name("h_st", "c-w_b-3-0", "a_b")


def test_parse_memory() -> None:
    assert parse_memory("512m") == 512 << 20
    assert parse_memory("1.5g") == 3 << 29
    assert parse_memory("1024") == 1024
    assert parse_memory("64MB") == 64 << 20
    with pytest.raises(TaskRejected):
        parse_memory("0")
