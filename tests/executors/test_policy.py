"""The host policy model: loading a policy file, and each allowlist's matching."""

from __future__ import annotations

import pwd
import re
from pathlib import Path

import msgspec
import pytest
import yaml

from skedlib import (
    Cluster,
    Container,
    DockerPolicy,
    DockerRequest,
    ExecutorContext,
    HostPolicy,
    Identity,
    PolicyRefused,
    Task,
    TaskDefinition,
    ValidationError,
    load_policy,
    normalize_image,
)
from skedlib.executors.bash import BashRunner
from skedlib.executors.process import ProcessRunner

EXAMPLE = """\
# /etc/skedlib/policy.yml
executors: [process, bash, docker]
commands: ["/usr/bin/*", "python3 -m http.server *"]
run_as: nobody
users: [daemon]
docker:
  registries: [registry.example.com]
  images: ["docker.io/library/busybox:*"]
  mounts: [/srv/data]
  capabilities: [NET_BIND_SERVICE]
"""


def test_the_documented_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    path.write_text(EXAMPLE)
    policy = load_policy(path)
    assert policy.executors == ["process", "bash", "docker"]
    assert policy.run_as == "nobody" and policy.users == ["daemon"]
    assert policy.docker.mounts == ["/srv/data"] and policy.docker.privileged is False
    assert policy.source == str(path)
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    assert load_policy(empty).executors is None  # an empty file is the defaults


@pytest.mark.parametrize(("text", "field"), [
    ("docker:\n  privileged: sure\n", "field docker.privileged: Expected `bool`, got `str`"),
    ("commands: /usr/bin/*\n", "field commands: Expected `array | null`, got `str`"),
    ("docker:\n  privilegd: true\n", "unknown field `privilegd`"),
    ("execs: [process]\n", "unknown field `execs`"),
    ("run_as: no-such-user-xyz\n", "field run_as: 'no-such-user-xyz': no user named"),
    ("docker:\n  mounts: [srv]\n", "field docker.mounts[0]: 'srv' is not an absolute path"),
    ("commands: [a\n", "malformed YAML"),
    ("- a\n- b\n", "expected a mapping of policy fields, got list"),
    ("source: x\n", "field source: not a policy field"),
])
def test_a_bad_policy_file_is_one_line_naming_file_and_field(tmp_path: Path, text: str,
                                                            field: str) -> None:
    path = tmp_path / "policy.yml"
    path.write_text(text)
    with pytest.raises(ValidationError) as info:
        load_policy(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and field in message
    assert "\n" not in message


def test_a_missing_policy_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"nope.yml: cannot read the host policy"):
        load_policy(tmp_path / "nope.yml")


def test_commands_match_argv0_or_the_whole_command_line() -> None:
    policy = HostPolicy(commands=["/usr/bin/*", "python3 -m http.server *"])
    policy.check_argv(["sleep", "5"], "/usr/bin/sleep")  # resolved path matches
    policy.check_argv(["/usr/bin/env"])
    policy.check_argv(["python3", "-m", "http.server", "8080"])
    with pytest.raises(PolicyRefused, match=r"rule commands: command \"python3 -c "
                                            r"'import os'\" matches no") as info:
        policy.check_argv(["python3", "-c", "import os"], "/usr/local/bin/python3")
    assert info.value.rule == "commands"
    HostPolicy().check_argv(["anything"])  # no commands list: everything (the default)


def test_shell_commands_must_match_as_a_whole() -> None:
    policy = HostPolicy(commands=["./server --port *"])
    policy.check_shell("./server --port 80")
    with pytest.raises(PolicyRefused, match=re.escape(
            "rule commands: start command 'curl x | sh'")):
        policy.check_shell("curl x | sh", "start command")


def test_script_checks_are_commands_and_never_run_as_the_agent_under_run_as() -> None:
    HostPolicy().check_script("curl -f localhost")  # the default: allowed
    with pytest.raises(PolicyRefused, match="rule commands: script check 'rm -rf /'"):
        HostPolicy(commands=["curl *"]).check_script("rm -rf /")
    with pytest.raises(PolicyRefused, match="rule run_as: script check 'true' would run as "
                                            "the agent's user, not as nobody"):
        HostPolicy(run_as="nobody").check_script("true")


def test_images_match_patterns_or_registries_in_full_form() -> None:
    assert normalize_image("busybox") == "docker.io/library/busybox:latest"
    assert normalize_image("me/app:2") == "docker.io/me/app:2"
    assert normalize_image("registry:5000/app") == "registry:5000/app:latest"
    assert normalize_image("localhost/app@sha256:ab") == "localhost/app@sha256:ab"
    policy = HostPolicy(docker=DockerPolicy(images=["docker.io/library/busybox:*"],
                                            registries=["registry.example.com"]))
    policy.check_image("busybox")
    policy.check_image("registry.example.com/team/app:1")
    for image in ("nginx", "registry.example.com.evil.org/app", "evil.org/busybox"):
        with pytest.raises(PolicyRefused, match=r"rule docker\.images"):
            policy.check_image(image)
    HostPolicy().check_image("anything/at:all")  # the default: every image


def test_dangerous_docker_options_are_refused_by_default_each_by_its_rule() -> None:
    cases = {
        "docker.privileged": DockerRequest(image="a", privileged=True),
        "docker.mounts": DockerRequest(image="a", binds=["/etc"]),
        "docker.docker_socket": DockerRequest(image="a", binds=["/var/run/docker.sock"]),
        "docker.capabilities": DockerRequest(image="a", cap_add=["SYS_ADMIN"]),
        "docker.host_network": DockerRequest(image="a", network_mode="host"),
        "docker.container_namespaces": DockerRequest(image="a", pid_mode="container:x"),
        "docker.host_pid": DockerRequest(image="a", pid_mode="host"),
        "docker.host_ipc": DockerRequest(image="a", ipc_mode="host"),
        "docker.devices": DockerRequest(image="a", devices=["/dev/sda"]),
        "docker.root": DockerRequest(image="a", user="00:0"),
        "docker.publish_addresses": DockerRequest(image="a", publish_addresses=["0.0.0.0"]),
    }
    for rule, request in cases.items():
        with pytest.raises(PolicyRefused) as info:
            HostPolicy().check_docker(request)
        assert info.value.rule == rule
        assert f"refused by the host policy (default), rule {rule}: " in str(info.value)
    # what is harmless stays allowed
    HostPolicy().check_docker(DockerRequest(image="a", binds=["named"], user="app",
                                            publish_addresses=["127.0.0.1"],
                                            network_mode="bridge"))


def test_mounts_are_allowed_by_path_prefix_and_the_socket_never_by_prefix() -> None:
    policy = HostPolicy(docker=DockerPolicy(mounts=["/srv/data", "/var/run"]))
    policy.check_docker(DockerRequest(image="a", binds=["/srv/data", "/srv/data/x"]))
    for source in ("/srv/database", "/srv/data/../../etc", "/srv"):
        with pytest.raises(PolicyRefused, match=r"rule docker\.mounts"):
            policy.check_docker(DockerRequest(image="a", binds=[source]))
    # the directory holding the socket, or the socket itself: its own rule
    for source in ("/var/run", "/var/run/docker.sock", "/"):
        with pytest.raises(PolicyRefused, match=r"rule docker\.docker_socket"):
            policy.check_docker(DockerRequest(image="a", binds=[source]))
    everything = HostPolicy(docker=DockerPolicy(mounts=["/"], docker_socket=True))
    everything.check_docker(DockerRequest(image="a", binds=["/", "/var/run/docker.sock"]))


def test_capabilities_are_allowed_by_name() -> None:
    policy = HostPolicy(docker=DockerPolicy(capabilities=["net_admin"]))
    policy.check_docker(DockerRequest(image="a", cap_add=["CAP_NET_ADMIN", "NET_ADMIN"]))
    with pytest.raises(PolicyRefused, match="--cap-add=ALL is not allowed"):
        policy.check_docker(DockerRequest(image="a", cap_add=["ALL"]))


def test_users_come_from_run_as_or_the_users_allowlist() -> None:
    nobody = pwd.getpwnam("nobody")
    assert HostPolicy().identity() is None  # the agent's own user
    ident = HostPolicy(run_as="nobody").identity()
    assert ident is not None and (ident.uid, ident.gid) == (nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(PolicyRefused, match=r"rule users: the task asks to run as 'root'"):
        HostPolicy(run_as="nobody").identity("root")
    daemon = HostPolicy(users=["daemon"]).identity("daemon")
    assert daemon is not None and daemon.uid == pwd.getpwnam("daemon").pw_uid
    assert Identity.resolve("4321:4321") == Identity(name="4321", uid=4321, gid=4321)
    # docker containers get the run-as user's numbers unless the image keeps its own
    keeps = HostPolicy(run_as="nobody", docker=DockerPolicy(image_user=["db:*"]))
    assert keeps.docker_user("app:1") == f"{nobody.pw_uid}:{nobody.pw_gid}"
    assert keeps.docker_user("db:5") is None
    with pytest.raises(PolicyRefused, match="rule users"):
        keeps.check_docker(DockerRequest(image="a", user="daemon"))


def test_the_example_in_the_security_docs_names_only_real_fields() -> None:
    text = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    section = text.split("## Host policy", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = yaml.safe_load(block)
    policy = msgspec.convert(data, HostPolicy)  # unknown fields would raise
    assert policy.docker.registries == ["registry.example.com"]
    assert policy.executors == ["process", "docker"]


def test_the_process_and_bash_executors_ask_the_policy_at_admission(tmp_path: Path) -> None:
    policy = HostPolicy(commands=["sleep *", "/usr/bin/sleep"], run_as="nobody")
    ctx = ExecutorContext(host="h", state_dir=tmp_path / "s", log_dir=tmp_path / "l",
                          policy=policy)
    task = Task(cluster=Cluster(name="c"), service="s", instance=0,
                task_definition=TaskDefinition(name="s", version=1, containers=[]))
    process, bash = ProcessRunner(ctx), BashRunner(ctx)
    try:
        process.admit(task, Container(name="a", type="process",
                                      executor={"argv": ["sleep", "5"]}))
        with pytest.raises(PolicyRefused, match=r"^container a: refused by the host policy "
                                                r"\(default\), rule commands: command "
                                                r"'true' matches no"):
            process.admit(task, Container(name="a", type="process",
                                          executor={"argv": ["true"]}))
        bash.admit(task, Container(name="b", type="bash", executor={
            "start": "sleep 5", "download_dir": "bin"}))
        with pytest.raises(PolicyRefused, match=r"rule commands: setup command 1 'rm -rf /'"):
            bash.admit(task, Container(name="b", type="bash", setup=["rm -rf /"],
                                       executor={"start": "sleep 5"}))
        for outside in ("/opt/app", "../x"):
            with pytest.raises(PolicyRefused, match=r"rule run_as: download_dir"):
                bash.admit(task, Container(name="b", type="bash", executor={
                    "start": "sleep 5", "download_dir": outside}))
    finally:
        process.close()
        bash.close()
