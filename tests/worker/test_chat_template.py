"""Chat prompts equal transformers' `apply_chat_template`, and the front end tokenizes off its event loop."""

import json
import shutil
import threading
from pathlib import Path

import pytest
from dataplane_helpers import NUM_LAYERS
from hf_builders import llama3_style_tokenizer
from transformers import AutoTokenizer

from helix_worker.envs import Settings
from helix_worker.errors import InvalidRequest
from helix_worker.fleet.layouts import manual_plan
from helix_worker.frontend.main import FrontendOptions, build_service
from helix_worker.frontend.service import TextRequest
from helix_worker.frontend.text import chat_messages
from helix_worker.metrics import FrontendMetrics
from helix_worker.model.tokenizer import Tokenizer, load_tokenizer

# raise_exception, tojson (no HTML escaping, indent), loop controls, tools, eos_token, and content null
# (transformers drops null-valued keys, so the template sees no content)
TOOLS_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ raise_exception('the first message must be the system prompt') }}"
    "{% endif %}{{ bos_token }}{% if tools %}TOOLS {{ tools | tojson(indent=2) }}\n{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'stop' %}{% break %}{% endif %}"
    "[{{ m['role'] }}] {% if m['content'] is not defined %}{{ m['tool_calls'] | tojson }}{% else %}"
    "{{ m['content'] | tojson }}{% endif %}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & 'here'",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def llama3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llama3_style_tokenizer(tmp_path_factory.mktemp("llama3"))


@pytest.fixture(scope="module")
def tools_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = llama3_style_tokenizer(tmp_path_factory.mktemp("tools"))
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": TOOLS_TEMPLATE}))
    return directory


def render(directory: Path, messages: list[dict], tools: list[dict] | None = None) -> tuple[str, str]:
    """(ours, transformers') prompt text for the same chat."""
    ours = load_tokenizer(directory).render_chat(chat_messages(messages), tools=tools)
    theirs = AutoTokenizer.from_pretrained(str(directory)).apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False)
    return ours, theirs


def test_llama3_template_matches_transformers(llama3: Path) -> None:
    messages = [{"role": "system", "content": "  Be brief. "}, {"role": "user", "content": "Hi <b>&</b> 漢🙂"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More\n\n"}]
    ours, theirs = render(llama3, messages)
    assert ours == theirs == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi <b>&</b> 漢🙂<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nMore<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_tools_tojson_break_and_null_content_match_transformers(tools_model: Path) -> None:
    messages = [{"role": "system", "content": "Use <tools> & \"quotes\""},
                {"role": "user",
                 "content": [{"type": "text", "text": "Weather in"}, {"type": "text", "text": "Oslo?"}]},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"type": "function",
                                 "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
                {"role": "stop", "content": "never rendered"}]
    flattened = messages[:1] + [{"role": "user", "content": "Weather in\nOslo?"}] + messages[2:]
    ours, theirs = render(tools_model, messages, TOOLS)
    assert ours == render(tools_model, flattened, TOOLS)[1]
    assert theirs != ours  # transformers itself does not flatten OpenAI content parts; the front end does
    assert '"Use <tools> & \\"quotes\\""' in ours and "Weather <now> & 'here'" in ours  # no HTML escaping
    assert '"name": "get_weather"' in ours and "never rendered" not in ours and ours.endswith("[assistant] ")


def test_a_chat_template_jinja_file_is_used(tmp_path: Path) -> None:
    directory = llama3_style_tokenizer(tmp_path)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(
        json.dumps({k: v for k, v in config.items() if k != "chat_template"}))
    (directory / "chat_template.jinja").write_text(
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
    assert render(directory, [{"role": "user", "content": "hi"}]) == ("<user>hi", "<user>hi")


def test_template_errors_and_bad_messages_are_invalid_requests(tools_model: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(tools_model)
    with pytest.raises(InvalidRequest, match="the first message must be the system prompt"):
        tokenizer.render_chat(chat_messages([{"role": "user", "content": "hi"}]))
    with pytest.raises(InvalidRequest, match="not text"):
        chat_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    with pytest.raises(InvalidRequest, match="string `role`"):
        chat_messages([{"content": "hi"}])
    bare = llama3_style_tokenizer(tmp_path)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    (bare / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "chat_template"}))
    with pytest.raises(InvalidRequest, match="no chat template"):
        load_tokenizer(bare).render_chat([{"role": "user", "content": "hi"}])


def _service(checkpoint: Path):
    plan = manual_plan("m", NUM_LAYERS, [[("a", 0, NUM_LAYERS)]])
    return build_service(FrontendOptions(plan, {"a": "127.0.0.1:1"}, checkpoint), Settings.from_env({}),
                         FrontendMetrics("m"))


async def test_prompts_are_tokenized_off_the_event_loop(checkpoint: Path, monkeypatch) -> None:
    service = _service(checkpoint)
    threads: list[str] = []
    encode = Tokenizer.encode

    def spy(self: Tokenizer, text: str, *, add_special: bool = True) -> list[int]:
        threads.append(threading.current_thread().name)
        return encode(self, text, add_special=add_special)

    monkeypatch.setattr(Tokenizer, "encode", spy)
    try:
        text = await service.prepare(TextRequest(prompt="Helix serves"))
        chat = await service.prepare(TextRequest(messages=({"role": "user", "content": "hi"},)))
    finally:
        service.close()
    assert text.prompt_ids == tuple(encode(service.tokenizer, "Helix serves"))
    assert len(chat.prompt_ids) > 4 and len(threads) == 2
    assert all(name.startswith("helix-tokenize") for name in threads), threads


async def test_a_broken_tokenizer_leaves_token_id_requests_working(checkpoint: Path, tmp_path: Path) -> None:
    shutil.copytree(checkpoint, tmp_path, dirs_exist_ok=True)
    (tmp_path / "tokenizer.json").write_text("{not json")
    service = _service(tmp_path)
    try:
        assert service.tokenizer is None
        assert (await service.prepare(TextRequest(prompt_ids=(1, 2, 3)))).prompt_ids == (1, 2, 3)
        with pytest.raises(InvalidRequest, match="cannot load the tokenizer .*send token ids instead of text"):
            await service.prepare(TextRequest(prompt="hi"))
    finally:
        service.close()
