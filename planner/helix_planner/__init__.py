"""Helix planner: place contiguous layer ranges on heterogeneous GPU nodes for maximum flow.

The planner never learns that Kubernetes, torch or gRPC exist: it turns a cluster
description and a model into a versioned plan document (see `plan_format`).
"""

from helix_planner.errors import PlanningError

__all__ = ["PlanningError"]
