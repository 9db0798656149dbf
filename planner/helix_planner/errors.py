"""The one exception type a user can cause: its message says what to change."""


class PlanningError(Exception):
    """Bad input or an impossible request; `str(err)` is the whole user-facing message."""
