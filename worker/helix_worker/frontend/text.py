"""Text around the token stream: stop strings and the checks on chat messages.

Stop strings are matched on decoded text; text that might be the start of a stop string
is held back until it is clear, so a client never sees part of a stop sequence. Chat
messages are checked and their OpenAI content-part lists flattened to the plain strings that
chat templates expect (text parts joined by newlines, as vLLM does) before transformers
renders them.
"""

from dataclasses import dataclass
from typing import Any

from helix_worker.errors import InvalidRequest


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


def chat_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """OpenAI chat messages as a template takes them: string role, content a string (null for an assistant)."""
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}] needs a string `role`")
        content = message.get("content")
        if content is None and message["role"] != "assistant":
            raise InvalidRequest(f"messages[{i}] needs `content` (only an assistant's may be null)")
        if isinstance(content, list):
            content = "\n".join(_text_part(part, i) for part in content)
        elif content is not None and not isinstance(content, str):
            raise InvalidRequest(f"messages[{i}].content must be a string, a list of text parts or null")
        checked.append(message | {"content": content})
    return checked


def _text_part(part: Any, index: int) -> str:
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(text := part.get("text"), str):
        return text
    raise InvalidRequest(f"messages[{index}].content has a part that is not text ({part!r:.80}): "
                         "this model takes text only")
