"""The tokenizer fingerprint: stable across save/load, different when behaviour differs."""

from transformers import AutoTokenizer

from attnops.models.modeling import resolve_base, tokenizer_sha256
from attnops.spec import DEFAULT_BASE_MODEL


def test_hash_is_stable_across_save_and_load(tokenizer, tmp_path):
    before = tokenizer_sha256(tokenizer)
    tokenizer.save_pretrained(tmp_path / "a")
    once = AutoTokenizer.from_pretrained(tmp_path / "a")
    once.save_pretrained(tmp_path / "b")
    twice = AutoTokenizer.from_pretrained(tmp_path / "b")
    assert tokenizer_sha256(once) == before == tokenizer_sha256(twice)
    assert len(before) == 64


def test_hash_changes_with_vocabulary(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    grown = AutoTokenizer.from_pretrained(tmp_path)
    grown.add_tokens(["solarpanel"])
    assert tokenizer_sha256(grown) != tokenizer_sha256(tokenizer)


def test_hash_changes_with_normalisation(tokenizer):
    cased = AutoTokenizer.from_pretrained(resolve_base(DEFAULT_BASE_MODEL), do_lower_case=False)
    assert tokenizer_sha256(cased) != tokenizer_sha256(tokenizer)
