"""Linux network namespaces for an emulated fleet: names, privileges, entering one, stale clean-up.

Every namespace of a run is called `helixnet-<pid>-<suffix>`, where <pid> is the process that
made it, so that a run started after a crash can tell the namespaces of dead runs from those of
live ones and remove the former (with any process still inside: those were started by that run).
A process enters a namespace for one socket (`entered`): sockets keep the namespace they were
made in, so one asyncio process can listen and dial in all of a fleet's namespaces
(`open_connection` dials from one).
"""

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from helix_worker.errors import ServingError

PREFIX = "helixnet-"
NETNS_DIR = Path("/var/run/netns")
_CLONE_NEWNET = 0x40000000
_CAP_NET_ADMIN = 12


def run_prefix(pid: int | None = None) -> str:
    """The prefix of every namespace the process `pid` (default: this one) makes."""
    return f"{PREFIX}{os.getpid() if pid is None else pid}-"


def require_net_admin() -> None:
    """A clear error where namespaces cannot be made: not root, no CAP_NET_ADMIN, no `ip` or `tc`."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise ServingError(f"emulating the network needs iproute2 ({', '.join(missing)} not found): install it "
                           "or use the loopback fleet")
    if not has_net_admin():
        raise ServingError("emulating the network needs root or CAP_NET_ADMIN (network namespaces, veth, tc): "
                           "run as root or use the loopback fleet")


def has_net_admin() -> bool:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return os.geteuid() == 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    return os.geteuid() == 0


def sh(*args: str, stdin: str | None = None) -> str:
    """Run one `ip`/`tc` command; its stderr in the error if it fails."""
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ServingError(f"`{' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    return [line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()]


def delete(names: Sequence[str]) -> None:
    """Kill what still runs in these namespaces, then remove them (the veths inside go with them)."""
    for name in names:
        for pid in sh("ip", "netns", "pids", name).split():
            with suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def remove_stale() -> list[str]:
    """Remove the namespaces of runs whose process is gone; the names removed."""
    stale = [name for name in namespaces() if name.startswith(PREFIX) and not _alive(_owner(name))]
    delete(stale)
    return stale


def _owner(name: str) -> int:
    pid = name[len(PREFIX):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else 0


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body with this thread in namespace `name` (None: stay where it is). Make sockets
    here synchronously; do not await inside."""
    if name is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            raise ServingError(f"cannot enter network namespace {name}: {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if libc.setns(home, _CLONE_NEWNET) != 0:
                raise ServingError(f"cannot return from network namespace {name}: "
                                   f"{os.strerror(ctypes.get_errno())}")
    finally:
        os.close(target)
        os.close(home)


async def open_connection(name: str | None, address: tuple[str, int],
                          **streams: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to `address` as namespace `name` (None: this one) sees it, as asyncio streams
    (`streams`: what `asyncio.open_connection` takes besides the socket; TLS needs server_hostname)."""
    with entered(name):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return await asyncio.open_connection(sock=sock, **streams)
