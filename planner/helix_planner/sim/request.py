"""A request in flight and the hops of its route.

A route is fixed at admission (the KV cache of a request lives on the nodes of its prompt
pass, so every decode step must revisit them). Plain slotted classes: the simulator touches
these objects once per stage of every iteration.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from helix_planner.sim.compute import GpuNode


@dataclass(frozen=True, slots=True)
class Hop:
    """Run layers [start, end) on `node`."""

    node: "GpuNode"
    start: int
    end: int

    @property
    def layers(self) -> int:
        return self.end - self.start


@dataclass(slots=True, eq=False)
class Request:
    """Prompt, then decode iterations until `output_tokens` tokens came back.

    The prompt pass returns the first output token (time to first token); each later token
    takes one decode iteration through the whole route. `output_tokens` stands for the
    request's max_tokens, which a front end knows and reserves KV cache for.
    """

    rid: int
    input_tokens: int
    output_tokens: int
    arrival: float  # when it joined the front end's queue
    route: tuple[Hop, ...] = ()
    stage: int = 0  # index in `route` of the hop it is travelling to or running on
    tokens: int = 0  # tokens of the current iteration: the prompt, then 1
    prompt: bool = True
    generated: int = 0
    first_token: float = -1.0
    sent_at: float = 0.0  # when the current hop was handed to the network

    @property
    def worst_case_tokens(self) -> int:
        """KV tokens the request holds at most (reserved at admission)."""
        return self.input_tokens + self.output_tokens

    @property
    def stored_tokens(self) -> int:
        """KV tokens held per layer once done: the prompt and every decode step's input."""
        return self.input_tokens + max(self.generated - 1, 0)
