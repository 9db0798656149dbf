"""Text around the token stream: stop strings and chat templates.

Stop strings are matched on decoded text; text that might be the start of a stop string
is held back until it is clear, so a client never sees part of a stop sequence.
"""

from dataclasses import dataclass

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from helix_worker.errors import InvalidRequest
from helix_worker.tokenizer import Tokenizer


@dataclass
class StopMatcher:
    stops: tuple[str, ...]
    _held: str = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was hit)."""
        text = self._held + piece
        hits = [(text.find(s), s) for s in self.stops if s and s in text]
        if hits:
            self._held = ""
            return text[:min(hits)[0]], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        text, self._held = self._held, ""
        return text


def render_chat(tokenizer: Tokenizer, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    """Apply the model's chat template (Jinja, sandboxed) to OpenAI-style messages."""
    if not tokenizer.chat_template:
        raise InvalidRequest("this model has no chat template: use /v1/completions with a plain prompt")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or \
                not isinstance(message.get("content"), str):
            raise InvalidRequest(f"messages[{i}] needs string `role` and `content`")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        template = env.from_string(tokenizer.chat_template)
        specials = {v: k for k, v in tokenizer.special.items()}
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=specials.get(tokenizer.prefix_ids[0], "") if tokenizer.prefix_ids else "",
                               eos_token=tokenizer.eos_token or "")
    except jinja2.TemplateError as err:
        raise InvalidRequest(f"the chat template failed on these messages: {err}") from None
