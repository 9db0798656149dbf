"""The real `openai` client against the front end: completions and chat (streaming and not),
n > 1, logit_bias and penalties applied on the last stage, fields refused by name, models."""

import openai
import pytest
from dataplane_helpers import MODEL, penalized_greedy

from helix_worker.engine.reference import ReferenceModel
from helix_worker.model.tokenizer import load_tokenizer

PROMPT = [40, 41, 42, 43, 44]
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def client(served):
    with openai.OpenAI(base_url=served.http_url + "/v1", api_key="unused", max_retries=0, timeout=120) as api:
        yield api


@pytest.fixture(scope="module")
def reference(checkpoint):
    return ReferenceModel(checkpoint)


def test_completion_and_its_stream_match_the_reference(client, reference, checkpoint) -> None:
    tokenizer = load_tokenizer(checkpoint)
    done = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, **GREEDY)
    expected = tokenizer.decode(reference.greedy(PROMPT, 8).tokens)
    assert done.choices[0].text == expected and done.choices[0].finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (len(PROMPT), 8)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == 8


def test_chat_and_its_stream_agree(client) -> None:
    messages = [{"role": "user", "content": "hello there"}]
    done = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=6, temperature=0)
    assert done.choices[0].message.role == "assistant" and done.usage.completion_tokens <= 6
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == done.choices[0].message.content


def test_max_tokens_omitted_fills_the_context_the_kv_cache_allows(client) -> None:
    # The served stages hold 1024 KV tokens each (the model's context is 2048): vLLM's default,
    # context minus prompt, bounded by what a pipeline can ever hold.
    done = client.completions.create(model=MODEL, prompt=[5] * 900, **GREEDY)
    assert done.usage.completion_tokens == 1024 - 900 and done.choices[0].finish_reason == "length"


def test_n_choices_each_sampled_on_its_own(client) -> None:
    body = {"model": MODEL, "prompt": "The quick", "max_tokens": 12, "temperature": 1.5, "seed": 3,
            "extra_body": {"ignore_eos": True}}
    done = client.completions.create(n=2, **body)
    assert [c.index for c in done.choices] == [0, 1]
    assert done.choices[0].text != done.choices[1].text
    assert done.choices[0].text == client.completions.create(**body).choices[0].text  # choice 0 keeps the seed
    assert done.usage.completion_tokens == 24
    streamed: dict[int, str] = {0: "", 1: ""}
    for chunk in client.completions.create(n=2, stream=True, **body):
        streamed[chunk.choices[0].index] += chunk.choices[0].text
    assert streamed == {0: done.choices[0].text, 1: done.choices[1].text}
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=3,
                                          max_tokens=4, temperature=1.0)
    assert [c.index for c in chat.choices] == [0, 1, 2]


def test_logit_bias_forces_a_token(client, reference, checkpoint) -> None:
    forced = 77
    done = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, logit_bias={str(forced): 100},
                                     logprobs=1, **GREEDY)
    assert done.choices[0].logprobs.tokens == [load_tokenizer(checkpoint).token_text(forced)] * 5
    banned = reference.greedy(PROMPT, 1).tokens[0]
    first = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, logit_bias={str(banned): -100},
                                      logprobs=1, **GREEDY)
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, logprobs=1, **GREEDY)
    assert first.choices[0].logprobs.tokens != plain.choices[0].logprobs.tokens


@pytest.mark.parametrize("fields, kwargs", [
    ({"frequency_penalty": 2.0}, {"frequency": 2.0}),
    ({"presence_penalty": 2.0}, {"presence": 2.0}),
    ({"extra_body": {"repetition_penalty": 3.0, "ignore_eos": True}}, {"repetition": 3.0}),
    ({"frequency_penalty": 0.0, "presence_penalty": 0.0, "logit_bias": {},
      "extra_body": {"repetition_penalty": 1.0, "ignore_eos": True}}, {}),
])
def test_penalties_give_the_penalized_reference_tokens(client, reference, checkpoint, fields, kwargs) -> None:
    tokenizer = load_tokenizer(checkpoint)
    prompt = [7, 8, 7, 8, 7, 8]
    done = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, **(GREEDY | fields))
    expected = penalized_greedy(reference, prompt, 16, **kwargs)
    assert done.choices[0].text == tokenizer.decode(expected)
    plain = reference.greedy(prompt, 16).tokens
    assert (expected == plain) == (not kwargs), "the penalty should change these greedy tokens"


@pytest.mark.parametrize("call, words", [
    (lambda c: c.completions.create(model=MODEL, prompt="x", extra_body={"min_tokens": 3}), "`min_tokens`"),
    (lambda c: c.completions.create(model=MODEL, prompt="x", suffix="y"), "`suffix`"),
    (lambda c: c.completions.create(model=MODEL, prompt="x", best_of=3), "`best_of`"),
    (lambda c: c.completions.create(model=MODEL, prompt="x", logit_bias={"999999": 5}), "`logit_bias`"),
    (lambda c: c.completions.create(model=MODEL, prompt="x", presence_penalty=2.5), "`presence_penalty`"),
    (lambda c: c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], tools=[
        {"type": "function", "function": {"name": "f", "parameters": {}}}]), "`tools`"),
])
def test_fields_the_server_cannot_honour_are_refused_by_name(client, call, words) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        call(client)
    assert words in refused.value.body["message"]


def test_text_response_format_and_user_are_accepted(client) -> None:
    done = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                          response_format={"type": "text"}, user="someone")
    assert done.usage.completion_tokens <= 2


def test_models_and_model_by_id(client) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4")
    assert "does not exist" in missing.value.body["message"]
