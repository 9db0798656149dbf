"""Kubernetes events on a HelixCluster: one per condition transition, plus plan decisions."""

from collections.abc import Iterable
from typing import Any

import kopf

from helix_operator.status.conditions import Condition


def post(body: Any, reason: str, message: str, *, warning: bool = False) -> None:
    kopf.event(body, type="Warning" if warning else "Normal", reason=reason, message=message)


def post_transitions(body: Any, changes: Iterable[Condition]) -> None:
    for cond in changes:
        post(body, cond.reason, f"{cond.type}={cond.status}: {cond.message}", warning=not cond.healthy)
