"""The errors a user can cause: `str(err)` is the whole message and says what to change.

`reason` is a stable CamelCase code for machines (the operator's condition reasons), so
callers never have to parse the wording.
"""


class PlanningError(Exception):
    """Bad input or an impossible request."""

    reason = "PlanningFailed"


class ModelDoesNotFit(PlanningError):
    """The fleet cannot hold every layer of the model even once."""

    reason = "ModelDoesNotFit"


class InfeasiblePlacement(PlanningError):
    """No placement carries flow: the network or front-end links do not allow one."""

    reason = "Infeasible"


class UnknownGpuType(PlanningError):
    """A node's GPU type is in no catalog."""

    reason = "UnknownGpuType"
