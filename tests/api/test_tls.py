"""``sked serve --tls-cert/--tls-key``: the API over HTTPS only, with the same token and
cross-site checks; a client that will not do TLS gets nothing and the server goes on."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from skedlib.api import ApiServer, tls_context
from skedlib.cli.main import main as sked_main
from skedlib.client import Client
from skedlib.errors import ValidationError
from tests.api.conftest import TOKEN
from tests.harness.common import TlsFiles, make_tls_files


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(tls: TlsFiles) -> Iterator[ApiServer]:
    with Client.open(f"memory://{uuid.uuid4().hex}") as client, \
            ApiServer(client, "127.0.0.1", 0, token=TOKEN,
                      tls=tls_context(tls.cert, tls.key)) as s:
        yield s


def test_https_with_the_token_and_the_checks(server: ApiServer, tls: TlsFiles) -> None:
    assert server.url.startswith("https://127.0.0.1:")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = requests.get(server.url + "/jobs", headers=auth, verify=str(tls.ca), timeout=10)
    assert r.status_code == 200, r.text
    r = requests.get(server.url + "/jobs", verify=str(tls.ca), timeout=10)
    assert r.status_code == 401
    r = requests.post(server.url + "/jobs", data=b'{"command": "true"}', verify=str(tls.ca),
                      headers={**auth, "Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 415
    port = server.address[1]
    r = requests.get(server.url + "/ping", verify=str(tls.ca), timeout=10,
                     headers={"Origin": f"https://localhost:{port}",
                              "Host": f"localhost:{port}"})
    assert r.status_code == 200
    with pytest.raises(requests.exceptions.SSLError):  # a certificate it does not trust
        requests.get(server.url + "/ping", verify=str(tls.other_ca), timeout=10)


def test_plain_http_gets_nothing_and_the_server_goes_on(server: ApiServer,
                                                        tls: TlsFiles) -> None:
    host, port = server.address
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"GET /v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
        data = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                data += chunk
    assert b"HTTP/1" not in data and b"items" not in data
    r = requests.get(server.url + "/ping", verify=str(tls.ca), timeout=10)
    assert r.status_code == 200


def test_bad_tls_files_are_one_line(tmp_path: Path, tls: TlsFiles) -> None:
    with pytest.raises(ValidationError, match="no such file"):
        tls_context(tmp_path / "missing.pem", tls.key)
    with pytest.raises(ValidationError, match="not a certificate and its key"):
        tls_context(tls.ca, tls.key)  # the key is not the CA's
    for argv in (["--tls-cert", str(tls.cert)], ["--tls-key", str(tls.key)]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = sked_main(["--backend", f"sqlite://{tmp_path}/s.db", "serve", *argv])
        assert code == 1 and "give both or neither" in out.getvalue()
        assert out.getvalue().count("\n") == 1


def test_serve_with_tls_as_a_process(tmp_path: Path, tls: TlsFiles) -> None:
    sked = shutil.which("sked", path=str(Path(sys.executable).parent))
    assert sked is not None
    env = {**os.environ, "SKED_API_TOKEN": TOKEN}
    with subprocess.Popen([sked, "--backend", f"sqlite://{tmp_path}/s.db", "serve",
                           "--listen", "127.0.0.1:0", "--tls-cert", str(tls.cert),
                           "--tls-key", str(tls.key)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            url = line.split("listening on ")[1].split()[0]
            assert url.startswith("https://"), line
            r = requests.get(url + "/jobs", headers={"Authorization": f"Bearer {TOKEN}"},
                             verify=str(tls.ca), timeout=10)
            assert r.status_code == 200, r.text
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
