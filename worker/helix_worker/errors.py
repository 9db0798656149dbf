"""The data plane's user-facing errors: one message that says what to change.

`ServingError` subclasses the planner's `PlanningError` so that the `helix` command line
prints it as one line without a traceback; `InvalidRequest` maps to INVALID_ARGUMENT / 400.
"""

from helix_planner.errors import PlanningError


class ServingError(PlanningError):
    """A bad checkpoint, plan, configuration or fleet: `str(err)` is the whole message."""


class InvalidRequest(ServingError):
    """A malformed or impossible inference request (bad field, prompt that can never fit)."""


class Unavailable(ServingError):
    """No pipeline can serve right now (every route down past the wait limit)."""
