"""W&B without a usable service: every fit finishes, offline, within ``logger.init_timeout``, and says so in one line.

The services are real sockets on 127.0.0.1: one that accepts connections and never answers, a port where nothing
listens, and an HTTP server that answers every W&B request with 401 (what W&B says to a stale API key)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import TINY

DUMMY_KEY = "0" * 40
WANDB_TINY = [o for o in TINY if not o.startswith("logger=")] + ["logger=wandb"]
OFFLINE_LINE = re.compile(r"^ssl-bench: W&B logs offline \((?P<reason>.+)\); upload later with: "
                          r"wandb sync (?P<path>\S+/wandb/offline-run-\S+)$")


class Service:
    """A TCP server on 127.0.0.1 in a thread. ``silent``: accepts connections and never answers. ``http``: answers
    HEAD with 200 and any other request with 401; ``head-only``: answers HEAD with 200 and nothing else. The
    request lines are kept in ``requests``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.connections = 0
        self.requests: list[str] = []
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self._open.append(conn)
            if self.kind != "silent":
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()
        self._listener.close()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            while length and len(body) < int(length[1]):
                body += conn.recv(65536)
            line = head.split(b"\r\n")[0].decode()
            self.requests.append(line)
            if line.startswith("HEAD"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            elif self.kind == "head-only":
                self._stop.wait(30)
            else:
                error = b'{"errors": [{"message": "invalid api key"}]}'
                conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(error)).encode() + b"\r\nConnection: close\r\n\r\n" + error)
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        for conn in self._open:
            conn.close()


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """W&B as on a machine that has a (dummy) API key: no WANDB_MODE, no netrc, no settings files; wandb set up
    afresh (it reads the environment once per process) and torn down after, so no live run or setting leaks."""
    import wandb

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))
    monkeypatch.setenv("WANDB_API_KEY", DUMMY_KEY)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_ERROR_REPORTING", raising=False)  # the fit sets it; monkeypatch removes it again
    wandb.teardown()
    try:
        yield monkeypatch
    finally:
        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()


def offline_line(err: str, run_dir: Path, alone: bool = True) -> re.Match:
    """The one line saying the run logs offline (``alone``: the only line on stderr), checked to name the run's
    offline W&B directory."""
    lines = [line for line in err.splitlines() if line.startswith("ssl-bench:") and "W&B" in line]
    assert len(lines) == 1, err
    if alone:
        assert err.strip() == lines[0]
    match = OFFLINE_LINE.match(lines[0])
    assert match, lines[0]
    path = Path(match["path"])
    assert path.parent == run_dir / "wandb" and path.is_dir() and list(path.glob("run-*.wandb"))
    return match


def check_offline_run(run_dir: Path) -> None:
    """The fit finished with one offline W&B run and no half-started online one."""
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert not list((run_dir / "wandb").glob("run-*"))


def fit(run_cli, run_dir: Path, *extra: str) -> tuple[int, str]:
    """A tiny W&B fit in-process; ``(exit_code, stderr)``."""
    import wandb

    try:
        code, _, err = run_cli("fit", "--config", "quickstart", *WANDB_TINY, f"run_dir={run_dir}", *extra)
    finally:
        if wandb.run is not None:
            wandb.finish()
    return code, err


def test_unanswering_service_goes_offline_within_init_timeout(wandb_env, tmp_path):
    """The reported case as a user meets it: ``ssl-bench fit`` with a dummy key and a service that never answers
    exits 0, makes one connection only, logs offline with one line that names init_timeout as the wait, and shows no
    deprecation warning about ``anonymous``."""
    service = Service("silent")
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_BASE_URL": service.url, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["WANDB_SILENT"] = "false"  # wandb's own messages and warnings are shown too
    init_timeout = 3
    try:
        proc = subprocess.run([sys.executable, "-m", "ssl_bench.cli", "fit", "--config", "quickstart", *WANDB_TINY,
                               f"run_dir={run_dir}", f"logger.init_timeout={init_timeout}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    finally:
        service.close()
    assert proc.returncode == 0, proc.stderr
    match = offline_line(proc.stderr, run_dir, alone=False)
    assert f"did not answer within {init_timeout} s (logger.init_timeout)" in match["reason"]
    check_offline_run(run_dir)
    assert service.connections == 1  # one check; no online wandb.init, no second attempt
    assert "anonymous" not in proc.stdout + proc.stderr


def test_refused_connection_goes_offline_at_once(wandb_env, run_cli, tmp_path):
    wandb_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{free_port()}")
    run_dir = tmp_path / "run"
    code, err = fit(run_cli, run_dir, "logger.init_timeout=30")
    assert code == 0
    assert "cannot reach W&B" in offline_line(err, run_dir)["reason"]  # refused, not timed out
    check_offline_run(run_dir)


def test_online_without_credentials_goes_offline_at_once(wandb_env, run_cli, tmp_path):
    service = Service("silent")
    wandb_env.setenv("WANDB_BASE_URL", service.url)
    wandb_env.delenv("WANDB_API_KEY")
    run_dir = tmp_path / "run"
    try:
        code, err = fit(run_cli, run_dir, "logger.mode=online", "logger.init_timeout=30")
    finally:
        service.close()
    assert code == 0
    assert offline_line(err, run_dir)["reason"].startswith("no W&B credentials")
    assert service.connections == 0
    check_offline_run(run_dir)


@pytest.mark.parametrize("kind, reason", [("http", "invalid api key"), ("head-only", "Timed out initializing run")])
def test_failed_start_tries_once_and_leaves_no_half_started_run(wandb_env, run_cli, tmp_path, kind, reason):
    """The service answers the check, then refuses the key (``http``) or never answers wandb.init's request
    (``head-only``, bounded by init_timeout): wandb.init fails once, its half-started run is torn down and removed,
    and the offline run makes no further request."""
    import wandb

    service = Service(kind)
    wandb_env.setenv("WANDB_BASE_URL", service.url)
    run_dir = tmp_path / "run"
    init_timeout = 3
    try:
        code, err = fit(run_cli, run_dir, f"logger.init_timeout={init_timeout}")
    finally:
        service.close()
    assert code == 0
    assert offline_line(err, run_dir)["reason"].startswith(f"W&B did not start the run: {reason}")
    assert service.requests.count("POST /graphql HTTP/1.1") == 1 and service.requests[0].startswith("HEAD")
    check_offline_run(run_dir)
    assert wandb.run is None


def test_init_timeout_must_be_positive(run_cli, tmp_path):
    code, _, err = run_cli("fit", "--config", "quickstart", "logger.init_timeout=0", f"run_dir={tmp_path / 'r'}")
    assert code == 2 and err.strip() == "ssl-bench: error: logger.init_timeout=0.0 is out of range; allowed: (0, 600]"
    assert not (tmp_path / "r").exists()
