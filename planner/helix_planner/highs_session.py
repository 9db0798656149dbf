"""HiGHS instances for this process.

HiGHS sizes one thread pool per process; an instance asking for a different thread count
than the pool has fails to solve, so every instance is made here and resizes the pool.
"""

import highspy


def new_highs(threads: int) -> highspy.Highs:
    """A quiet HiGHS instance whose thread pool has `threads` threads."""
    highs = highspy.Highs()  # type: ignore[no-untyped-call]  # highspy's stub leaves Highs() unannotated
    highs.setOptionValue("output_flag", False)
    highs.resetGlobalScheduler(True)
    highs.setOptionValue("threads", int(threads))
    return highs
