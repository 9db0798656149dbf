"""JSON output by grammar-constrained decoding (xgrammar, as vLLM and SGLang use it).

A request whose `json_schema` is set (OpenAI's response_format json_object or json_schema)
draws each token at the last stage from the logits its grammar allows: xgrammar compiles the
schema against the tokenizer's vocabulary once (cached by schema), a matcher per request
says which tokens may come next, and advances with each token sampled. A re-prefill (after a
preemption or on another route) arrives under a new request id with the tokens generated so
far (`seen_output_ids`), which the new matcher replays. JSON is compact (no free whitespace
between tokens, which a weak model would otherwise fill until max_tokens); once the value is
complete only the model's end-of-sequence tokens (the ones the front end stops on) are allowed.
"""

import re
from pathlib import Path

import torch
import xgrammar as xgr

from helix_worker.errors import ServingError
from helix_worker.model.config import ModelConfig
from helix_worker.model.tokenizer import load_tokenizer, stop_ids
from helix_worker.protocol import SamplingParams

JSON_OBJECT = '{"type": "object"}'  # OpenAI's json_object, as vLLM compiles it
_NOISE = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # xgrammar's "[time] file.cc:line: " before its message


def schema_problem(schema: str) -> str | None:
    """Why xgrammar cannot turn `schema` (JSON Schema text) into a grammar, if it cannot."""
    try:
        xgr.Grammar.from_json_schema(schema, any_whitespace=False)
    except (RuntimeError, ValueError) as err:
        return _NOISE.sub("", str(err)).strip() or repr(err)
    return None


class Grammars:
    """Per request at the last stage: the matcher of each request with a `json_schema`. The
    vocabulary is read from the checkpoint's tokenizer on first use, so stages that never see
    a JSON request never load it."""

    def __init__(self, checkpoint: Path, config: ModelConfig) -> None:
        self._checkpoint, self._config, self._vocab_size = checkpoint, config, config.vocab_size
        self._compiler: xgr.GrammarCompiler | None = None
        self._matchers: dict[str, xgr.GrammarMatcher] = {}

    def _compile(self, schema: str) -> xgr.CompiledGrammar:
        """The schema against the vocabulary (on the compute thread, the only caller; cached by schema)."""
        if self._compiler is None:
            tokenizer = load_tokenizer(self._checkpoint)
            info = xgr.TokenizerInfo.from_huggingface(tokenizer.hf, vocab_size=self._vocab_size,
                                                      stop_token_ids=list(stop_ids(self._config, tokenizer)))
            self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        return self._compiler.compile_json_schema(schema, any_whitespace=False)

    def constrain(self, request_id: str, logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        """The logits to draw from: `logits` itself for an unconstrained request, else a copy with
        every token the grammar forbids next at -inf. Raises ValueError when the schema does not
        compile or the tokens generated before a re-prefill do not fit it."""
        if not params.json_schema:
            return logits
        matcher = self._matchers.get(request_id)
        if matcher is None:
            try:
                matcher = xgr.GrammarMatcher(self._compile(params.json_schema))
            except (RuntimeError, ServingError) as err:  # a schema xgrammar refuses, an unreadable tokenizer
                raise ValueError(f"json_schema: {_NOISE.sub('', str(err)).strip()}") from None
            if not all(matcher.accept_token(t) for t in params.seen_output_ids):
                raise ValueError("the tokens generated before the re-prefill do not fit the json_schema")
            self._matchers[request_id] = matcher
        if matcher.is_terminated():
            return logits  # complete, and its end-of-sequence token sampled: nothing is left to constrain
        bitmask = xgr.allocate_token_bitmask(1, self._vocab_size)
        matcher.fill_next_token_bitmask(bitmask)
        out = logits.clone().unsqueeze(0)  # float32, as the LM head gives it
        xgr.apply_token_bitmask_inplace(out, bitmask, vocab_size=self._vocab_size)
        return out[0]

    def accept(self, request_id: str, token: int) -> bool:
        """Advance the request's matcher past `token`; False if its grammar forbids it."""
        matcher = self._matchers.get(request_id)
        return matcher is None or matcher.is_terminated() or matcher.accept_token(token)

    def forget(self, request_id: str) -> None:
        self._matchers.pop(request_id, None)
