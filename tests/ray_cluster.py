"""A real Ray cluster for tests and benchmarks: `ray start --head` on this machine with its own
temporary folder and its own ports, stopped by its own process ids whatever happens.

    with RayCluster(num_cpus=2) as cluster:
        run(["autoft", "run", ..., "--search-backend", "ray", "--ray-address", cluster.address],
            env=cluster.env)

Token authentication on, with a token of its own passed in the environment (`cluster.env`: a
driver needs it to join), so that nothing is read from or written to ~/.ray/auth_token, which
every user of this machine's account shares.

Why not `ray stop`: it stops every Ray on the machine, other people's included. Every process of
this cluster is in the session `ray start` was given (start_new_session) or names the cluster's
own temporary folder on its command line; those, and their children, are the ones stopped.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def free_ports(n: int) -> list[int]:
    """n ports nobody listens on now (the OS picks them)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def ray_executable() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else shutil.which("ray") or "ray"


class RayCluster:
    def __init__(self, num_cpus: int = 2, num_gpus: int = 0, timeout_s: float = 180):
        self.num_cpus, self.num_gpus, self.timeout_s = num_cpus, num_gpus, timeout_s
        # short: Ray's Unix sockets live under it and a socket path has at most 107 characters
        self.temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
        self.sid: int | None = None
        self.address = ""
        self.log = ""
        # the environment of this cluster and of every driver that joins it
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
                        RAY_AUTH_TOKEN=secrets.token_hex(32))
        self.env.pop("RAY_AUTH_TOKEN_PATH", None)

    def start(self) -> "RayCluster":
        gcs, agent, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = free_ports(7)
        self.address = f"127.0.0.1:{gcs}"
        cmd = [ray_executable(), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
               "--num-cpus", str(self.num_cpus), "--num-gpus", str(self.num_gpus), "--temp-dir", self.temp_dir,
               "--include-dashboard", "false", "--disable-usage-stats",
               "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
               "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
                                start_new_session=True)
        self.sid = proc.pid  # the session every process of this cluster stays in
        try:
            self.log, _ = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"ray start did not finish in {self.timeout_s:.0f} s")
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({proc.returncode}):\n{self.log[-3000:]}")
        return self

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster (and their children)."""
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                mine = (self.sid is not None and os.getsid(p.pid) == self.sid) or any(
                    self.temp_dir in part for part in (p.info["cmdline"] or []))
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
            if mine and p.pid != os.getpid():
                found[p.pid] = p
        for p in list(found.values()):
            try:
                for c in p.children(recursive=True):
                    found.setdefault(c.pid, c)
            except psutil.Error:
                pass
        return [p for p in found.values() if _alive(p)]

    def workers(self) -> list[psutil.Process]:
        """The cluster's Ray worker processes (the ones that run trials)."""
        out = []
        for p in self.processes():
            try:
                name = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if name.startswith("ray::") and "Agent" not in name:
                out.append(p)
        return out

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            _signal(p, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in procs):
            time.sleep(0.2)
        for p in procs + self.processes():
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(procs, timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "RayCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass
