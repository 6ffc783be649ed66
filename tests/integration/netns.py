"""Hosts on one machine: a Linux network namespace each, wired to a bridge on a private /24.

Each host sees only its own loopback and the bridge's subnet (no default route), so a process in it
cannot reach the machine's PostgreSQL or Redis (they listen on loopback only) by mistake. The test
process, in the root namespace, reaches every host through the bridge's address. Written over the
`ip` command (iproute2) because that is what an operator would type; pyroute2 adds a dependency for
the same dozen calls.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def ip(*args: str) -> str:
    """Run ``ip ARGS``; a failure raises with ip's own message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def unsupported() -> str | None:
    """Why namespaces cannot be made here (not root, no `ip`), or None when they can."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


@dataclass
class Host:
    """One namespace: its name, its address on the bridge, and the processes started in it."""

    netns: str
    addr: str
    logs: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def popen(self, name: str, argv: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        """Start ``argv`` inside this host, output to ``logs/NAME.log`` (see :meth:`log`)."""
        with self.log(name).open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> Path:
        return self.logs / f"{self.netns}-{name}.log"

    def wait_ready(self, name: str, proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 60) -> None:
        """Poll ``ready()`` until true; fail with the process's log tail if it exits or never gets there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"{name} on {self.netns} exited ({proc.returncode}):\n{log_tail(self.log(name))}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.2)
        pytest.fail(f"{name} on {self.netns} not ready after {timeout:.0f} s:\n{log_tail(self.log(name))}")

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill_all(self, timeout: float = 10) -> None:
        """SIGKILL every process in the namespace, as if the machine lost power; wait until none is left."""
        deadline = time.monotonic() + timeout
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)  # reap, so no zombie is left behind


class Network:
    """A bridge in the root namespace and hosts attached to it; :meth:`close` removes all of it.

    Names carry a random suffix and the subnet is drawn among 10.200-249.x.0/24 not already routed
    here, so runs in parallel (other engineers', CI jobs) do not collide.
    """

    def __init__(self, logs: Path) -> None:
        self.suffix = uuid.uuid4().hex[:6]
        self.bridge = f"rt{self.suffix}br"  # interface names hold at most 15 characters
        self.logs = logs
        self.subnet = self._free_subnet()
        self.hosts: dict[str, Host] = {}
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.address(1)}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        routed = [ipaddress.ip_network(line.split()[0]) for line in ip("-4", "route").splitlines() if "/" in line]
        while True:
            subnet = ipaddress.ip_network(f"10.{random.randint(200, 249)}.{random.randint(0, 255)}.0/24")
            if not any(subnet.overlaps(net) for net in routed):
                return subnet

    @property
    def root_addr(self) -> str:
        """The root namespace's (the test process's) address on the bridge."""
        return self.address(1)

    def address(self, n: int) -> str:
        return str(self.subnet.network_address + n)

    def add_host(self, name: str) -> Host:
        """A namespace ``rtSUFFIX-NAME`` with loopback up and a veth to the bridge."""
        n = len(self.hosts) + 2
        host = Host(f"rt{self.suffix}-{name}", self.address(n), self.logs)
        outside, inside = f"rt{self.suffix}v{n}", f"rt{self.suffix}p{n}"
        ip("netns", "add", host.netns)
        self.hosts[name] = host
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", host.netns)
        ip("link", "set", outside, "master", self.bridge, "up")
        ip("-n", host.netns, "addr", "add", f"{host.addr}/24", "dev", inside)
        ip("-n", host.netns, "link", "set", inside, "up")
        ip("-n", host.netns, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        """Kill every process of every host, then delete the namespaces, their veths and the bridge."""
        for n, host in enumerate(self.hosts.values(), start=2):
            host.kill_all()
            with contextlib.suppress(RuntimeError):
                ip("link", "del", f"rt{self.suffix}v{n}")  # takes its peer with it
            with contextlib.suppress(RuntimeError):
                ip("netns", "del", host.netns)
        with contextlib.suppress(RuntimeError):
            ip("link", "del", self.bridge)
