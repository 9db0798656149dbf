"""A Pod Security Standards checker for tests, written from the published profiles
(kubernetes.io/docs/concepts/security/pod-security-standards, policy version "latest"):
every baseline and restricted control, by its name there. Independent of the operator's own
template checks, so that a test of the built pods does not grade the code by itself."""

from collections.abc import Callable, Iterator
from typing import Any

Pod = dict[str, Any]
Violation = tuple[str, str]

CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
CONFINED = {"RuntimeDefault", "Localhost"}


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for key in CONTAINER_LISTS:
        for container in spec.get(key) or []:
            yield f"{key}/{container.get('name')}", container


def _contexts(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The pod's securityContext and every container's."""
    yield "pod", spec.get("securityContext") or {}
    for where, container in _containers(spec):
        yield where, container.get("securityContext") or {}


def host_process(pod: Pod) -> Iterator[str]:
    for where, context in _contexts(pod["spec"]):
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            yield where


def host_namespaces(pod: Pod) -> Iterator[str]:
    yield from (key for key in ("hostNetwork", "hostPID", "hostIPC") if pod["spec"].get(key))


def privileged_containers(pod: Pod) -> Iterator[str]:
    yield from (where for where, c in _containers(pod["spec"]) if (c.get("securityContext") or {}).get("privileged"))


def _added(container: dict[str, Any]) -> set[str]:
    return set(((container.get("securityContext") or {}).get("capabilities") or {}).get("add") or [])


def baseline_capabilities(pod: Pod) -> Iterator[str]:
    yield from (where for where, c in _containers(pod["spec"]) if _added(c) - BASELINE_CAPABILITIES)


def host_path_volumes(pod: Pod) -> Iterator[str]:
    yield from (v["name"] for v in pod["spec"].get("volumes") or [] if "hostPath" in v)


def host_ports(pod: Pod) -> Iterator[str]:
    for where, container in _containers(pod["spec"]):
        if any(port.get("hostPort") for port in container.get("ports") or []):
            yield where


def apparmor(pod: Pod) -> Iterator[str]:
    for key, value in (pod["metadata"].get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and value != "runtime/default" \
                and not value.startswith("localhost/"):
            yield key
    for where, context in _contexts(pod["spec"]):
        if (context.get("appArmorProfile") or {}).get("type") not in (None, *CONFINED):
            yield where


def selinux(pod: Pod) -> Iterator[str]:
    for where, context in _contexts(pod["spec"]):
        options = context.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES or options.get("user") or options.get("role"):
            yield where


def proc_mount(pod: Pod) -> Iterator[str]:
    for where, container in _containers(pod["spec"]):
        if (container.get("securityContext") or {}).get("procMount") not in (None, "Default"):
            yield where


def baseline_seccomp(pod: Pod) -> Iterator[str]:
    for where, context in _contexts(pod["spec"]):
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            yield where


def sysctls(pod: Pod) -> Iterator[str]:
    for sysctl in (pod["spec"].get("securityContext") or {}).get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            yield sysctl["name"]


def volume_types(pod: Pod) -> Iterator[str]:
    for volume in pod["spec"].get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            yield f"{volume['name']}: {', '.join(sorted(kinds))}"


def privilege_escalation(pod: Pod) -> Iterator[str]:
    for where, container in _containers(pod["spec"]):
        if (container.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False:
            yield where


def running_as_non_root(pod: Pod) -> Iterator[str]:
    pod_level = (pod["spec"].get("securityContext") or {}).get("runAsNonRoot")
    for where, container in _containers(pod["spec"]):
        own = (container.get("securityContext") or {}).get("runAsNonRoot")
        if own is False or (own is None and pod_level is not True):
            yield where


def running_as_non_root_user(pod: Pod) -> Iterator[str]:
    yield from (where for where, context in _contexts(pod["spec"]) if context.get("runAsUser") == 0)


def restricted_seccomp(pod: Pod) -> Iterator[str]:
    pod_level = ((pod["spec"].get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    for where, container in _containers(pod["spec"]):
        own = ((container.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
        if (own or pod_level) not in CONFINED:
            yield where


def restricted_capabilities(pod: Pod) -> Iterator[str]:
    for where, container in _containers(pod["spec"]):
        capabilities = (container.get("securityContext") or {}).get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []) or _added(container) - {"NET_BIND_SERVICE"}:
            yield where


BASELINE: dict[str, Callable[[Pod], Iterator[str]]] = {
    "HostProcess": host_process,
    "Host Namespaces": host_namespaces,
    "Privileged Containers": privileged_containers,
    "Capabilities (baseline)": baseline_capabilities,
    "HostPath Volumes": host_path_volumes,
    "Host Ports": host_ports,
    "AppArmor": apparmor,
    "SELinux": selinux,
    "/proc Mount Type": proc_mount,
    "Seccomp (baseline)": baseline_seccomp,
    "Sysctls": sysctls,
}
RESTRICTED: dict[str, Callable[[Pod], Iterator[str]]] = {
    **BASELINE,
    "Volume Types": volume_types,
    "Privilege Escalation": privilege_escalation,
    "Running as Non-root": running_as_non_root,
    "Running as Non-root user": running_as_non_root_user,
    "Seccomp (restricted)": restricted_seccomp,
    "Capabilities (restricted)": restricted_capabilities,
}


def violations(pod: Pod, profile: dict[str, Callable[[Pod], Iterator[str]]] = RESTRICTED) -> list[Violation]:
    """(control, where) for every control of `profile` that `pod` (metadata and spec) breaks."""
    return [(control, where) for control, check in profile.items() for where in check(pod)]
