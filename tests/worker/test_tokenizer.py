"""The byte-level BPE reader: round trips, merges, special tokens, streaming, real-style configs."""

import re
from pathlib import Path

import pytest

from helix_worker.errors import ServingError
from helix_worker.model_init import build_tokenizer
from helix_worker.tokenizer import (GPT2_SPLIT, StreamDecoder, byte_alphabet, load_tokenizer, tokenizer_from_dict,
                                    translate_regex)

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.fixture(scope="module")
def tokenizer(checkpoint: Path):
    return load_tokenizer(checkpoint)


@pytest.mark.parametrize("text", ["Hello world", "  spaces\tand\nnewlines  ", "ünïcödé 漢字 🙂", "x" * 50, ""])
def test_round_trip(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.special["<|begin_of_text|>"]
    assert tokenizer.decode(ids) == text


def test_merges_shorten_common_words(tokenizer) -> None:
    assert len(tokenizer.encode(" the pipeline", add_special=False)) < len(" the pipeline".encode())
    assert tokenizer.decode(tokenizer.encode(" the pipeline", add_special=False)) == " the pipeline"


def test_special_tokens_are_matched_in_text(tokenizer) -> None:
    ids = tokenizer.encode("a<|end_of_text|>b", add_special=False)
    assert ids == [ord("a"), tokenizer.special["<|end_of_text|>"], ord("b")]
    assert tokenizer.decode(ids) == "ab"
    assert tokenizer.decode(ids, skip_special=False) == "a<|end_of_text|>b"


def test_stream_decoder_never_splits_a_character(tokenizer) -> None:
    ids = tokenizer.encode("é🙂", add_special=False)  # every byte is its own token here
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.feed(i) for i in ids]
    assert "".join(pieces) + decoder.flush() == "é🙂"
    assert all("\ufffd" not in p for p in pieces) and "" in pieces


def test_translated_pretokenizer_regexes_split_like_the_originals() -> None:
    gpt2 = re.compile(translate_regex(GPT2_SPLIT))
    assert gpt2.findall("Hello, world's 123 fox!!") == ["Hello", ",", " world", "'s", " 123", " fox", "!!"]
    llama3 = re.compile(translate_regex(LLAMA3_SPLIT))
    assert llama3.findall("Hello, world's 12345 fox_bar\n\nok") == [
        "Hello", ",", " world", "'s", " ", "123", "45", " fox", "_bar", "\n\n", "ok"]


def test_llama3_style_tokenizer_json() -> None:
    body, _ = build_tokenizer(40)
    body["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    body["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "trim_offsets": False}, body["post_processor"]]}
    body["model"]["ignore_merges"] = True
    body["model"]["merges"] = [m.split(" ") for m in body["model"]["merges"]]  # newer list-of-pairs form
    tokenizer = tokenizer_from_dict(body, {"eos_token": {"content": "<|end_of_text|>"}})
    text = "Helix serves large models"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.prefix_ids == (tokenizer.special["<|begin_of_text|>"],)
    assert tokenizer.eos_token_id == tokenizer.special["<|end_of_text|>"]


def test_byte_alphabet_is_a_bijection() -> None:
    assert len(set(byte_alphabet())) == 256


def test_sentencepiece_style_tokenizer_is_refused_clearly() -> None:
    body = {"model": {"type": "Unigram", "vocab": []}, "pre_tokenizer": {"type": "Metaspace"}}
    with pytest.raises(ServingError, match="only byte-level BPE"):
        tokenizer_from_dict(body)


def test_missing_tokenizer_file(tmp_path: Path) -> None:
    with pytest.raises(ServingError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
