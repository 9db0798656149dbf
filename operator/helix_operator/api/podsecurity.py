"""Pod Security Standard "restricted" for every pod the operator builds.

`restrict` gives a built pod spec the settings the profile demands (non-root uid, no
privilege escalation, every capability dropped, the runtime's seccomp profile) wherever
the pod or the user's template left them unset, so sidecars added by a template comply too.
`template_problem` refuses a `worker.template` or `frontend.template` that asks for what
the profile forbids: setting it over the built pod would otherwise undo the defaults.
"""

import copy
import itertools
from collections.abc import Iterator, Mapping
from typing import Any

# The `helix` user of docker/Dockerfile.worker-*: USER names it, so the kubelet cannot tell it is not root.
RUN_AS_USER = 10001
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")
ALLOWED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
ALLOWED_VOLUMES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                             "projected", "secret"})
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes"})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
CONFINED = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"

Problem = tuple[str, str]


def restrict(pod_spec: Mapping[str, Any]) -> dict[str, Any]:
    """`pod_spec` with the restricted profile's settings filled in where unset (a copy)."""
    spec = copy.deepcopy(dict(pod_spec))
    pod = spec.setdefault("securityContext", {})
    pod.setdefault("runAsNonRoot", True)
    pod.setdefault("runAsUser", RUN_AS_USER)
    pod.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    for key in CONTAINER_LISTS:
        for container in spec.get(key) or []:
            context = container.setdefault("securityContext", {})
            context.setdefault("allowPrivilegeEscalation", False)
            capabilities = context.setdefault("capabilities", {})
            drop = capabilities.setdefault("drop", [])
            if "ALL" not in drop:
                drop.append("ALL")
    return spec


def template_problem(template: Mapping[str, Any], where: str) -> Problem | None:
    """(field path, what to change) for the first thing in a pod template that breaks the
    restricted profile, or None; `where` is the template's own path (spec.worker.template)."""
    try:
        return next(itertools.chain(_annotation_problems(template.get("metadata") or {}, f"{where}.metadata"),
                                    _problems(template.get("spec") or {}, f"{where}.spec")), None)
    except (AttributeError, TypeError):  # the CRD leaves the template's shape free
        return where, ("is not a pod template: give metadata and spec as in a Pod (spec.containers a list of "
                       "containers, each a mapping)")


def _annotation_problems(metadata: Mapping[str, Any], at: str) -> Iterator[Problem]:
    for key, value in (metadata.get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and value != "runtime/default" and not value.startswith("localhost/"):
            yield f"{at}.annotations[{key}]", f"{value} is not allowed; use runtime/default"


def _problems(spec: Mapping[str, Any], at: str) -> Iterator[Problem]:
    for key in HOST_NAMESPACES:
        if spec.get(key):
            yield f"{at}.{key}", "must not be true: pods share no host namespace; remove it"
    for i, volume in enumerate(spec.get("volumes") or []):
        kind = next((k for k in volume if k != "name"), None)
        if kind == "hostPath":
            yield f"{at}.volumes[{i}].hostPath", ("host paths are not allowed; use a persistentVolumeClaim, a csi "
                                                  "volume or an emptyDir")
        elif kind is not None and kind not in ALLOWED_VOLUMES:
            yield f"{at}.volumes[{i}].{kind}", (f"volume type {kind} is not allowed; use one of "
                                                f"{', '.join(sorted(ALLOWED_VOLUMES))} (a PersistentVolumeClaim for "
                                                "network storage)")
    yield from _context_problems(spec.get("securityContext") or {}, f"{at}.securityContext")
    for i, sysctl in enumerate((spec.get("securityContext") or {}).get("sysctls") or []):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield f"{at}.securityContext.sysctls[{i}]", f"{sysctl.get('name')} is not a safe sysctl; remove it"
    for key in CONTAINER_LISTS:
        for i, container in enumerate(spec.get(key) or []):
            yield from _container_problems(container, f"{at}.{key}[{i}]")


def _container_problems(container: Mapping[str, Any], at: str) -> Iterator[Problem]:
    for j, port in enumerate(container.get("ports") or []):
        if port.get("hostPort"):
            yield f"{at}.ports[{j}].hostPort", "host ports are not allowed; remove it (the Services expose the pods)"
    context = container.get("securityContext") or {}
    where = f"{at}.securityContext"
    yield from _context_problems(context, where)
    if context.get("privileged"):
        yield f"{where}.privileged", "must not be true; remove it (GPUs come from the device plugin's resource)"
    if context.get("allowPrivilegeEscalation"):
        yield f"{where}.allowPrivilegeEscalation", "must be false; remove it"
    added = set((context.get("capabilities") or {}).get("add") or []) - ALLOWED_CAPABILITIES
    if added:
        yield f"{where}.capabilities.add", (f"{', '.join(sorted(added))} may not be added; only NET_BIND_SERVICE "
                                            "is allowed")
    if context.get("procMount") not in (None, "Default"):
        yield f"{where}.procMount", "must be Default; remove it"


def _context_problems(context: Mapping[str, Any], where: str) -> Iterator[Problem]:
    """Rules a pod-level and a container-level securityContext share."""
    if context.get("runAsNonRoot") is False:
        yield f"{where}.runAsNonRoot", "must not be false: the pods run as a non-root user; remove it"
    if context.get("runAsUser") == 0:
        yield f"{where}.runAsUser", f"must not be 0 (root); remove it or give another uid ({RUN_AS_USER} by default)"
    seccomp = (context.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in CONFINED:
        yield f"{where}.seccompProfile.type", f"{seccomp} is not allowed; use RuntimeDefault or Localhost"
    apparmor = (context.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in CONFINED:
        yield f"{where}.appArmorProfile.type", f"{apparmor} is not allowed; use RuntimeDefault or Localhost"
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        yield f"{where}.seLinuxOptions", (f"only type ({', '.join(sorted(t for t in SELINUX_TYPES if t))}) and "
                                          "level may be set; remove user and role")
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        yield f"{where}.windowsOptions.hostProcess", "must not be true; remove it"
