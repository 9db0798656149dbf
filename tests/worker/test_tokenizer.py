"""Tokenizer parity with Hugging Face: ids and text equal to `tokenizers` and transformers' on a varied
corpus, for a byte-level BPE and a SentencePiece-style (Metaspace, byte fallback) tokenizer.json."""

import json
from pathlib import Path

import pytest
from hf_builders import CORPUS, llama3_style_tokenizer, sentencepiece_style_tokenizer
from tokenizers import Tokenizer as RawTokenizer
from transformers import AutoTokenizer

from helix_worker.errors import ServingError
from helix_worker.model.config import load_model_config
from helix_worker.model.tokenizer import StreamDecoder, Tokenizer, load_tokenizer, stop_ids

BUILDERS = {"byte-level-bpe": llama3_style_tokenizer, "sentencepiece-bpe": sentencepiece_style_tokenizer}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def built(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tokenizer]:
    directory = BUILDERS[request.param](tmp_path_factory.mktemp(request.param))
    return directory, load_tokenizer(directory)


def test_ids_and_text_equal_tokenizers_and_transformers(built: tuple[Path, Tokenizer]) -> None:
    directory, ours = built
    raw = RawTokenizer.from_file(str(directory / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(directory))
    mismatches = []
    for text in CORPUS:
        ids = ours.encode(text)
        if ids != raw.encode(text).ids or ids != auto.encode(text):
            mismatches.append(("encode", text))
        plain = ours.encode(text, add_special=False)
        if plain != auto.encode(text, add_special_tokens=False):
            mismatches.append(("encode without specials", text))
        for skip in (True, False):
            if ours.decode(ids, skip_special=skip) != auto.decode(ids, skip_special_tokens=skip):
                mismatches.append((f"decode skip={skip}", text))
    assert mismatches == []
    assert ours.encode("hi")[0] == ours.hf.bos_token_id == auto.bos_token_id
    assert ours.eos_token_id == auto.eos_token_id is not None


def test_byte_level_round_trip_and_added_tokens(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(llama3_style_tokenizer(tmp_path))
    for text in CORPUS:
        assert tokenizer.decode(tokenizer.encode(text)) == text.replace("<|begin_of_text|>", "").replace(
            "<|eot_id|>", "").replace("<|start_header_id|>", "").replace("<|end_header_id|>", "")
    ids = tokenizer.encode("a <tool_call> b<|eot_id|>", add_special=False)
    assert tokenizer.backend.token_to_id("<tool_call>") in ids and tokenizer.backend.token_to_id("<|eot_id|>") in ids
    assert tokenizer.decode(ids) == "a <tool_call> b"  # non-special added tokens survive skip_special
    assert tokenizer.decode(ids, skip_special=False) == "a <tool_call> b<|eot_id|>"


def test_sentencepiece_byte_fallback_spells_unseen_characters_in_bytes(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(sentencepiece_style_tokenizer(tmp_path))
    ids = tokenizer.encode("漢", add_special=False)
    assert [tokenizer.backend.id_to_token(i) for i in ids][-3:] == ["<0xE6>", "<0xBC>", "<0xA2>"]
    assert tokenizer.decode(tokenizer.encode("two  spaces\n\tand 漢🙂")) == "two  spaces\n\tand 漢🙂"


def test_streaming_never_emits_half_a_character_and_adds_up(built: tuple[Path, Tokenizer]) -> None:
    _, tokenizer = built
    for text in CORPUS:
        ids = tokenizer.encode(text)
        for cut in range(1, len(ids)):
            prompt, generated = ids[:cut], ids[cut:]
            before = tokenizer.decode(prompt)
            if "\ufffd" in before:
                continue  # the prompt itself ends inside a character
            decoder = StreamDecoder(tokenizer, tuple(prompt))
            pieces = [decoder.feed(i) for i in generated]
            assert not any("\ufffd" in piece for piece in pieces), text
            assert "".join(pieces) + decoder.flush() == tokenizer.decode(ids)[len(before):], (text, cut)


def test_stream_flush_gives_an_unfinished_character_as_replacement(built: tuple[Path, Tokenizer]) -> None:
    _, tokenizer = built
    ids = tokenizer.encode("🙂", add_special=False)
    assert len(ids) > 1
    decoder = StreamDecoder(tokenizer)
    assert [decoder.feed(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert "\ufffd" in decoder.flush()


def test_stop_ids_are_generation_configs_eos_and_the_tokenizers(checkpoint: Path, tmp_path: Path) -> None:
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((checkpoint / name).read_bytes())
    eos = load_tokenizer(tmp_path).eos_token_id
    assert load_model_config(tmp_path).eos_token_ids == (eos,)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 7], "bos_token_id": 1}))
    assert load_model_config(tmp_path).eos_token_ids == (5, 7)
    assert stop_ids(load_model_config(tmp_path), load_tokenizer(tmp_path)) == (5, 7, eos)


def test_missing_and_broken_tokenizer_files_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServingError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}}')
    with pytest.raises(ServingError, match="cannot load the tokenizer"):
        load_tokenizer(tmp_path)
