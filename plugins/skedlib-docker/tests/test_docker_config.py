"""The ``docker`` executor's blob Struct, declared by the plugin: Sked's JSON shape,
found through the registry, and checked at ``sked apply`` (no Docker engine needed)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from skedlib_docker import plugin
from skedlib_docker.config import DockerConfig

from skedlib.client import Client
from skedlib.codecs import decode, parse_manifest
from skedlib.errors import ValidationError
from skedlib.models import Task
from skedlib.plugins import Registry, get_registry

SKED_TASK = Path(__file__).parents[3] / "tests" / "data" / "sked_task.json"

MANIFEST = """\
task_definitions:
  - name: web
    version: 1
    containers:
      - {name: app, type: docker, executor: BLOB}
"""


def test_sked_executor_blob_decodes_as_docker_config() -> None:
    task = decode(SKED_TASK.read_bytes(), Task)
    blob = task.task_definition.containers[0].executor
    cfg = msgspec.convert(blob, DockerConfig)
    assert (cfg.image, cfg.container_port) == ("tutum/hello-world", 80)
    assert msgspec.to_builtins(cfg) == {**msgspec.to_builtins(DockerConfig(image="")), **blob}


def test_the_plugin_declares_the_docker_config() -> None:
    assert get_registry().executor_config("docker") is DockerConfig  # by its entry point
    alone = Registry(load_entrypoints=False, plugins=(plugin,))
    assert alone.executor_config("docker") is DockerConfig
    assert Registry(load_entrypoints=False).executor_config("docker") is None


def test_a_bad_docker_blob_is_refused_at_apply_in_one_line() -> None:
    with Client.open("memory://") as client:
        with pytest.raises(ValidationError) as info:
            # (cmd may be a string: Sked's shape; ports may not)
            client.apply(parse_manifest(MANIFEST.replace("BLOB", "{image: x, ports: run}"),
                                        "m.yml"))
        assert str(info.value) == (
            'm.yml: task_definitions[0] "web": field containers[0].executor: docker executor: '
            "Expected `array`, got `str` - at `containers[0].executor.ports`")
        with pytest.raises(ValidationError) as info:
            client.apply(parse_manifest(MANIFEST.replace("BLOB", "{cmd: [run]}"), "m.yml"))
        assert str(info.value) == (
            'm.yml: task_definitions[0] "web": field containers[0].executor: docker executor: '
            "Object missing required field `image`")
        assert client.backend.list("").items == []
