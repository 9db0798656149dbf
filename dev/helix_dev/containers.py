"""A Pod's container as a local process: command, arguments and environment, translated.

Every image is this Python environment, so `helix ...` runs the installed command. The
translation is what a container runtime and the cluster network would do, done on text:
mount paths become the pod's host directories, `0.0.0.0` becomes 127.0.0.1, the pod's
container ports become its local ports (see `network`), and in-cluster DNS names with a
port become the local address standing for them.
"""

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helix_dev.network import LOOPBACK, PortBook, pod_owner

PORT_FLAG = re.compile(r"^--[\w-]*port$")
ANY_ADDRESS = "0.0.0.0"
HOST_ENV_DROPPED = ("HELIX_", "KUBERNETES_")


@dataclass(frozen=True)
class LocalCommand:
    argv: list[str]
    env: dict[str, str]


def host_env() -> dict[str, str]:
    """What every container inherits: this machine's environment without Helix settings (those come
    from the pod spec), with this Python environment's scripts first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(HOST_ENV_DROPPED)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def translate_container(pod: Mapping[str, Any], container: Mapping[str, Any], mounts: Mapping[str, Path],
                        ports: PortBook, extra_env: Mapping[str, str]) -> LocalCommand:
    """The process for `container`; `mounts` maps its mount paths to host directories and
    `extra_env` is what the node adds (device variables), under the pod's own env."""
    own = {int(p["containerPort"]): ports.port(pod_owner(pod), int(p["containerPort"]))
           for p in container.get("ports") or []}

    def text(value: str) -> str:
        value = ports.translate(value)
        for mount in sorted(mounts, key=len, reverse=True):
            value = re.sub(rf"(^|=){re.escape(mount)}(?=/|$)", _after_prefix(str(mounts[mount])), value)
        return LOOPBACK if value == ANY_ADDRESS else value

    argv = [text(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
    for i, arg in enumerate(argv):
        flag, sep, value = arg.partition("=")
        if sep and PORT_FLAG.match(flag) and value.isdigit() and int(value) in own:
            argv[i] = f"{flag}={own[int(value)]}"
        elif PORT_FLAG.match(arg) and i + 1 < len(argv) and argv[i + 1].isdigit() and int(argv[i + 1]) in own:
            argv[i + 1] = str(own[int(argv[i + 1])])
    env = {**host_env(), **extra_env}
    for item in container.get("env") or []:
        if "value" in item:
            value = text(str(item["value"]))
            if item["name"].endswith("_PORT") and value.isdigit() and int(value) in own:
                value = str(own[int(value)])
            env[item["name"]] = value
    return LocalCommand(argv, env)



def _after_prefix(target: str) -> Callable[[re.Match[str]], str]:
    """A re.sub replacement: the match's first group, then `target`."""
    return lambda match: match.group(1) + target


def probe_target(pod: Mapping[str, Any], probe: Mapping[str, Any],
                 ports: PortBook) -> tuple[str, int, str, bool] | None:
    """(kind, local port, path, over TLS) of a tcpSocket or httpGet probe; None if the pod has no such probe."""
    for kind in ("tcpSocket", "httpGet"):
        if kind in probe:
            port = ports.pod_port(pod, probe[kind]["port"])
            if port is not None:
                return kind, port, str(probe[kind].get("path", "/")), probe[kind].get("scheme") == "HTTPS"
    return None
