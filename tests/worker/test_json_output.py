"""OpenAI `response_format` JSON modes and `tool_choice` "required"/named through the real
`openai` client: xgrammar masks the logits on the last stage of the served two-stage fleet (a
random model, which left alone writes no JSON), and a request without a format in the same
batches samples as before."""

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest
import torch
from dataplane_helpers import MODEL, grammar_greedy

from helix_worker.engine.grammar import JSON_OBJECT, Grammars
from helix_worker.engine.model import LayerSlice
from helix_worker.engine.penalties import with_history
from helix_worker.engine.reference import ReferenceModel
from helix_worker.engine.stage_engine import StageEngine
from helix_worker.model.config import load_model_config
from helix_worker.model.tokenizer import load_tokenizer
from helix_worker.protocol import Chunk, Failure, Hop, Phase, Sampled, SamplingParams

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 6},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "role": {"enum": ["admin", "user"]},
    "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}},
    "required": ["name", "age", "role", "tags"]}
SMALL = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"},
                                                    "n": {"type": "integer", "minimum": 0, "maximum": 99}},
                    "required": ["ok", "n"]})
AS_PERSON = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
PROMPT = [40, 41, 42, 43, 44]


@pytest.fixture(scope="module")
def client(served):
    with openai.OpenAI(base_url=served.http_url + "/v1", api_key="unused", max_retries=0, timeout=120) as api:
        yield api


def _together(*calls: Any) -> list[Any]:
    """Run the calls at once, so the stages batch them together."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def test_json_modes_hold_and_a_cobatched_free_request_is_unaffected(client, checkpoint) -> None:
    tokenizer = load_tokenizer(checkpoint)
    (quote,), (brace,) = tokenizer.encode('"', add_special=False), tokenizer.encode("}", add_special=False)
    # Nudges towards '"' and '}' end the random model's strings and objects within max_tokens.
    objects = [{"model": MODEL, "messages": [{"role": "user", "content": f"object {i}"}], "max_tokens": 150,
                "temperature": 1.0, "seed": i, "logit_bias": {str(quote): 20, str(brace): 14}} for i in range(3)]
    people = [{"model": MODEL, "messages": [{"role": "user", "content": "a person"}], "max_tokens": 80,
               "temperature": 1.0, "seed": i} for i in range(2)]
    chat = client.chat.completions.create
    free, *done = _together(
        lambda: client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0,
                                          extra_body={"ignore_eos": True}),
        *[lambda o=o: chat(**o, response_format={"type": "json_object"}) for o in objects],
        *[lambda p=p: chat(**p, response_format=AS_PERSON) for p in people])
    for answer in done:
        assert answer.choices[0].finish_reason == "stop", answer.choices[0].message.content
    assert all(isinstance(json.loads(a.choices[0].message.content), dict) for a in done[:3])
    for answer in done[3:]:
        jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)

    expected = ReferenceModel(checkpoint).greedy(PROMPT, 24).tokens
    assert free.choices[0].text == tokenizer.decode(expected)
    plain = _together(*[lambda o=o: chat(**(o | {"max_tokens": 20})) for o in objects])
    assert not any(_is_json(p.choices[0].message.content) for p in plain), "without the grammar, no JSON"
    streamed = chat(**people[0], response_format=AS_PERSON, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == done[3].choices[0].message.content


def test_greedy_json_schema_is_the_reference_argmax_under_the_grammar(client, checkpoint) -> None:
    """Independently: greedy over the whole model's logits, masked by xgrammar's matcher here."""
    expected = grammar_greedy(ReferenceModel(checkpoint), checkpoint, PROMPT, json.dumps(PERSON))
    done = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=80, temperature=0,
                                     extra_body={"response_format": AS_PERSON})  # vLLM's completions extension
    assert done.choices[0].text == load_tokenizer(checkpoint).decode(expected)
    assert done.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(done.choices[0].text), PERSON)


WEATHER = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"]}
CLOCK = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "forecast", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "clock", "parameters": CLOCK}}]


def test_tool_choice_required_and_named_give_tool_calls(client, checkpoint) -> None:
    """The calls come back as vLLM's OpenAI server gives them, arguments valid for their function."""
    (bracket,) = load_tokenizer(checkpoint).encode("]", add_special=False)
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "weather in Rome?"}], "tools": TOOLS,
           "max_tokens": 150, "temperature": 0, "logit_bias": {str(bracket): 14}}  # a nudge to end the list
    required = client.chat.completions.create(**ask, tool_choice="required").choices[0]
    named = client.chat.completions.create(**ask, tool_choice={"type": "function",
                                                               "function": {"name": "clock"}}).choices[0]
    assert (required.finish_reason, named.finish_reason) == ("tool_calls", "stop")
    assert required.message.tool_calls and [c.function.name for c in named.message.tool_calls] == ["clock"]
    schemas = {"weather": WEATHER, "clock": CLOCK}
    for call in required.message.tool_calls + named.message.tool_calls:
        assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    assert required.message.content == named.message.content == ""
    for choice, words in [("auto", "`tool_choice` \"auto\""), ({"type": "function", "function": {"name": "nope"}},
                                                                 "names function 'nope', which is not in `tools`")]:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**ask, tool_choice=choice)
        assert words in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**ask, tool_choice="required", stream=True)
    assert "`stream` with `tool_choice`" in refused.value.body["message"]


@pytest.mark.parametrize("response_format, extra, words", [
    ({"type": "regex"}, {}, "`response_format` type 'regex'"),
    ({"type": "json_schema"}, {}, "`response_format.json_schema` must be an object"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integr"}}}, {},
     "`response_format.json_schema.schema` cannot constrain the output: Unsupported type \"integr\""),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "extra": 1}}, {},
     "`response_format.json_schema.extra`"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": 1}}, {},
     "`response_format.json_schema.strict` must be true or false"),
    ({"type": "json_object"}, {"ignore_eos": True}, "`ignore_eos` cannot go with a JSON `response_format`"),
    ({"type": "json_object"}, {"tools": TOOLS, "tool_choice": "required"}, "`response_format` cannot go with"),
])
def test_bad_response_formats_are_refused_by_name(client, response_format, extra, words) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=4,
                                       response_format=response_format, extra_body=extra)
    assert words in refused.value.body["message"]


def test_a_re_prefill_replays_the_generated_tokens_into_a_new_matcher(checkpoint) -> None:
    """After a preemption the request returns under a new id with its tokens so far; its mask
    then equals the one the first matcher would give, and nothing else is masked."""
    config, tokenizer = load_model_config(checkpoint), load_tokenizer(checkpoint)
    grammars = Grammars(checkpoint, config)
    params = SamplingParams(json_schema=JSON_OBJECT)
    logits, generated = torch.zeros(config.vocab_size), tokenizer.encode('{"ab": [1, ', add_special=False)
    for token in generated:
        assert not torch.isinf(grammars.constrain("first", logits, params)[token])
        assert grammars.accept("first", token)
    resumed = SamplingParams(json_schema=JSON_OBJECT, seen_output_ids=tuple(generated))
    mask = grammars.constrain("first", logits, params)
    assert torch.equal(grammars.constrain("second", logits, resumed), mask)
    (brace,), (digit,) = tokenizer.encode("}", add_special=False), tokenizer.encode("7", add_special=False)
    assert torch.isinf(mask[brace]) and not torch.isinf(mask[digit]), "inside the list: a value, not '}'"
    assert grammars.constrain("free", logits, SamplingParams()) is logits
    grammars.forget("first")
    with pytest.raises(ValueError, match="do not fit the json_schema"):
        grammars.constrain("third", logits, SamplingParams(json_schema=JSON_OBJECT, seen_output_ids=(brace,)))


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


class _Delivered:
    """The stage engine's outputs for a front end that is this test."""

    def __init__(self) -> None:
        self.sampled: asyncio.Queue[Sampled] = asyncio.Queue()

    def forward(self, hop: Hop, chunks: list[Chunk], hidden: torch.Tensor) -> None:
        raise AssertionError("one stage holds every layer: nothing goes on")

    def deliver(self, reply_to: str, results: list[Sampled], failures: list[Failure]) -> None:
        assert not failures, failures
        for result in results:
            self.sampled.put_nowait(result)


async def test_a_preempted_json_request_resumes_its_grammar_on_the_stage(checkpoint) -> None:
    """In process, one stage with every layer: a request stopped after a few tokens and
    re-prefilled under a new id (as the front end does after a preemption) with its tokens on
    the prefill (`with_history`) ends exactly as one that ran through, and as the reference."""
    config = load_model_config(checkpoint)
    model = LayerSlice.load(checkpoint, 0, config.num_layers)
    engine = StageEngine("n", model, model.new_pool(16, 16), max_batch_tokens=64,
                         grammars=Grammars(checkpoint, config))
    engine.outputs = outputs = _Delivered()
    route, params = (Hop("n", "local", 0, config.num_layers),), SamplingParams(json_schema=SMALL)
    stop = config.eos_token_ids

    async def generate(wire_id: str, prompt: list[int], before: list[int], upto: int) -> list[int]:
        out, ids, phase, position = list(before), prompt + before, Phase.PREFILL, 0
        while len(out) < upto and not (out and out[-1] in stop):
            sampling = with_history(params, tuple(prompt), out) if phase == Phase.PREFILL else params
            engine.submit([Chunk(wire_id, phase, position, len(ids), route, "test", sampling)], torch.tensor(ids))
            out.append((await asyncio.wait_for(outputs.sampled.get(), 30)).token_id)
            position, ids, phase = position + len(ids), [out[-1]], Phase.DECODE
        return out

    running = asyncio.create_task(engine.run())
    try:
        through = await generate("a.0", PROMPT, [], 64)
        cut = await generate("b.0", PROMPT, [], 7)
        engine.release(["b.0"])
        resumed = await generate("b.1", PROMPT, cut, 64)
    finally:
        running.cancel()
    assert len(cut) == 7 and resumed == through == grammar_greedy(ReferenceModel(checkpoint), checkpoint, PROMPT, SMALL)
    assert isinstance(json.loads(load_tokenizer(checkpoint).decode(through)), dict)
