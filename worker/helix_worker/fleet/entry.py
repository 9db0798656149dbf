"""The public ports of a fleet that `helix up` may roll a new plan into: relays in front of the
front end, whose target follows the plan being served.

Clients dial the entry (the HTTP and gRPC ports `helix up` prints); each relay forwards every new
connection to the port its target file names (`delayline.retarget`), so switching to a new
front end is rewriting two small files: connections already open stay with the old front end,
which drains them (requests in flight finish, gRPC clients get GOAWAY and reconnect through the
entry, now to the new one), while every new connection reaches the new one. On an emulated network
the entry's relays are the front end's portals (`emulated.start_relays`); on loopback they run in
a relay process of their own (`start_loopback_entry`).
"""

import subprocess
from dataclasses import dataclass
from pathlib import Path

from helix_worker.fleet.delayline import Relay, retarget, start_relays

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Portals:
    """Where this machine reaches the serving front end, and where it reaches each color's front end
    directly (`previews`, HTTP; a rollout checks the new one ready there before the switch)."""
    grpc_address: str
    http_url: str
    targets: tuple[Path, Path]  # the files naming the ports the gRPC and HTTP relays forward to
    previews: tuple[str, ...] = ()

    def switch(self, grpc_port: int, http_port: int) -> None:
        """New connections go to the front end listening on these ports (behind the same relays)."""
        retarget(self.targets[0], grpc_port)
        retarget(self.targets[1], http_port)


def entry_relays(workdir: Path, target_ns: str | None, target_ports: tuple[int, int],
                 listen_ports: tuple[int, int]) -> tuple[list[Relay], tuple[Path, Path]]:
    """The gRPC and HTTP relays from `listen_ports` of this machine to `target_ports` (gRPC, HTTP) on
    127.0.0.1 of namespace `target_ns` (None: this one), retargetable; and their target files."""
    targets = (workdir / "entry-grpc.json", workdir / "entry-http.json")
    relays = []
    for target, listen, port in zip(targets, listen_ports, target_ports):
        retarget(target, port)
        relays.append(Relay((LOOPBACK, listen), (LOOPBACK, port), None, target_ns, target_file=str(target)))
    return relays, targets


def start_loopback_entry(workdir: Path, grpc_port: int, http_port: int) -> tuple[subprocess.Popen[bytes], Portals]:
    """The entry of a loopback fleet, listening on `grpc_port` and `http_port` (0: any free port); it
    forwards nowhere until the first `switch`. The relay process and the portals."""
    workdir.mkdir(parents=True, exist_ok=True)
    relays, targets = entry_relays(workdir, None, (0, 0), (grpc_port, http_port))
    process, (grpc, http) = start_relays(relays, workdir)
    return process, Portals(f"{LOOPBACK}:{grpc}", f"http://{LOOPBACK}:{http}", targets)
