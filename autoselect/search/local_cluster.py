"""A real multi-node Ray cluster on one machine, for tests and benchmarks of ``--backend ray``.

Each node is a ``ray start --block`` process of its own (a head on 127.0.0.1, then worker nodes joining it), so
that killing a node is killing a process. Drivers join it with :attr:`LocalCluster.env`::

    with LocalCluster(workers=1) as cluster:
        subprocess.run(["autoselect", "search", ..., "--backend", "ray", "--address", cluster.address],
                       env=cluster.env)

Authentication (see :mod:`autoselect.search.ray_auth`): the cluster runs with token authentication, as the README
tells users to run theirs. It needs no Ray state on the machine: each cluster makes its own random token in a
private folder of its own
(:attr:`LocalCluster.workdir`, removed on :meth:`stop`) and hands it to every node and driver through
``RAY_AUTH_TOKEN_PATH`` in :attr:`env`. Nothing is read from or written to ``~/.ray``. Each node's output goes to
a log file in that folder; when a node fails to start, the last lines of its log are in the error.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from autoselect.search.ray_auth import private_token

__all__ = ["LocalCluster", "trial_workers"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    def __init__(self, *, workers: int = 1, cpus_per_node: int = 1, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, timeout: float = 120.0) -> None:
        self.address = f"127.0.0.1:{_free_port()}"
        self.client_address = f"ray://127.0.0.1:{_free_port()}"  # the head's Ray Client server
        self.workdir = Path(tempfile.mkdtemp(prefix="autoselect-ray-"))  # 0700: the token stays private
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **(env or {}))
        self.env.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the cluster's own token file
        self.env.update(private_token(self.workdir))
        self.cwd = cwd
        self.cpus = cpus_per_node
        self.n_workers = workers
        self.timeout = timeout
        self.head: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._logs: dict[int, Path] = {}

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as f:  # the child keeps its own descriptor
            proc = subprocess.Popen(["ray", "start", "--block", "--node-ip-address=127.0.0.1",
                                     f"--num-cpus={self.cpus}", *args], env=self.env, cwd=self.cwd, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._logs[proc.pid] = log
        return proc

    def log_tail(self, proc: subprocess.Popen, lines: int = 15) -> str:
        """The last ``lines`` lines that node printed (``ray start``'s own errors among them)."""
        log = self._logs.get(proc.pid)
        if log is None or not log.is_file():
            return ""
        text = log.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def alive_nodes(self, watch: subprocess.Popen | None = None) -> int:
        """Nodes the cluster reports alive, asked from a separate driver process (0 while it does not answer, or
        as soon as the node process ``watch`` exits: a driver would wait for a head that is gone)."""
        code = (f"import ray; ray.init(address={self.address!r}, logging_level=40); "
                "print(sum(1 for n in ray.nodes() if n['Alive']))")
        driver = subprocess.Popen([sys.executable, "-c", code], env=self.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        deadline = time.time() + 60
        while driver.poll() is None and time.time() < deadline and (watch is None or watch.poll() is None):
            time.sleep(0.2)
        if driver.poll() is None:
            driver.kill()
            driver.wait()
            return 0
        lines = (driver.communicate()[0] or "").strip().splitlines()
        return int(lines[-1]) if driver.returncode == 0 and lines and lines[-1].isdigit() else 0

    def _wait_for(self, nodes: int, proc: subprocess.Popen, what: str) -> None:
        deadline = time.time() + self.timeout
        while self.alive_nodes(watch=proc) < nodes:
            exited = proc.poll()
            if exited is not None or time.time() > deadline:
                why = f"exited with status {exited}" if exited is not None else f"not up after {self.timeout:.0f} s"
                tail = self.log_tail(proc)
                raise RuntimeError(f"the local Ray cluster's {what} did not start ({why})"
                                   + (f"; `ray start` printed:\n{tail}" if tail else "; `ray start` printed nothing"))
            time.sleep(1)

    def start(self) -> LocalCluster:
        port = self.address.rsplit(":", 1)[1]
        client_port = self.client_address.rsplit(":", 1)[1]
        self.head = self._start(["--head", f"--port={port}", f"--ray-client-server-port={client_port}",
                                 "--include-dashboard=false", "--disable-usage-stats"], "head")
        self._wait_for(1, self.head, "head")
        for i in range(self.n_workers):
            self.workers.append(self._start([f"--address={self.address}"], f"worker{i + 1}"))
            self._wait_for(2 + i, self.workers[-1], f"worker node {i + 1}")
        return self

    @staticmethod
    def stop_node(proc: subprocess.Popen, *, kill: bool = False) -> None:
        """SIGTERM lets ``ray start --block`` stop its node's processes; ``kill`` SIGKILLs the whole node."""
        if proc.poll() is not None:
            return
        if kill:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for proc in [*self.workers, *([self.head] if self.head else [])]:
            self.stop_node(proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def trial_workers() -> list[int]:
    """PIDs of this machine's Ray worker processes running a Tune trial now (titled ``ray::ImplicitFunc.train``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ray::ImplicitFunc.train"):
                pids.append(int(entry.name))
    return pids
