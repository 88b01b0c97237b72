"""The word-level tokenizer of gcctl's own CLIPs: open_clip's id conventions, and every word gcctl says known."""

import pytest
import torch

from gcctl.clip.captions import DEFAULT_ATTRIBUTE_PROMPT, DEFAULT_CAPTION, fill_prompt
from gcctl.clip.factory import fresh_clip
from gcctl.clip.words import PAD, UNKNOWN, WordTokenizer, split_words
from gcctl.errors import GcctlError
from gcctl.finetune.pools import SHIPPED_POOLS, read_pool
from gcctl.methods.prompts import PromptLearner, TextTower
from gcctl.synth.corpus import caption_words, write_corpus


@pytest.fixture(scope="module")
def tiny():
    return fresh_clip("gcctl-tiny")


def test_ids_follow_open_clip_conventions():
    tokenizer = WordTokenizer(["a", "photo", "of", "cat", "."], context_length=8, vocab_size=16)
    tokens = tokenizer(["A photo of a cat.", "a dog"])
    assert tokens.dtype == torch.long and tokens.shape == (2, 8)
    assert tokens[0].tolist() == [14, 2, 3, 4, 2, 5, 6, 15]
    assert tokens[1].tolist() == [14, 2, UNKNOWN, 15, PAD, PAD, PAD, PAD]  # "dog" is unknown, then padding
    assert (tokens.argmax(dim=-1) == torch.tensor([7, 3])).all()  # open_clip pools at the end token, the largest id
    assert tokenizer("a photo").shape == (1, 8)


def test_long_texts_are_cut_and_keep_their_end_token():
    tokenizer = WordTokenizer(["a"], context_length=5, vocab_size=8)
    assert tokenizer(["a a a a a a a"])[0].tolist() == [6, 2, 2, 2, 7]
    assert tokenizer(["a a a a a"], context_length=4)[0].tolist() == [6, 2, 2, 7]


def test_words_hyphens_numbers_and_punctuation_are_split():
    assert split_words("A close-up photo, of 3 cats!") == ["a", "close-up", "photo", ",", "of", "3", "cats", "!"]


def test_bad_word_lists_are_refused():
    with pytest.raises(GcctlError, match="repeats a"):
        WordTokenizer(["a", "b", "a"], context_length=8, vocab_size=16)
    with pytest.raises(GcctlError, match="raise vocab_size to 7"):
        WordTokenizer(["a", "b", "c"], context_length=8, vocab_size=6)


def test_the_tiny_clip_reads_words_and_knows_every_word_gcctl_writes(tiny):
    tokenizer = tiny.tokenizer
    assert isinstance(tokenizer, WordTokenizer)
    assert tiny.provenance["context_length"] == tokenizer.context_length
    assert not tokenizer.unknown(" ".join(caption_words()))
    assert not tokenizer.unknown(DEFAULT_CAPTION.format("circle"))
    assert not tokenizer.unknown(fill_prompt(DEFAULT_ATTRIBUTE_PROMPT, **{"class": "circle", "value": "grass"}))
    for pool in SHIPPED_POOLS:
        assert not tokenizer.unknown(" ".join(read_pool(pool)).replace("{}", "circle")), pool


def test_corpus_captions_fit_the_tiny_clip_context(tmp_path, tiny):
    from gcctl.synth.corpus import load_corpus

    corpus = load_corpus(write_corpus(tmp_path, n=3000, seed=0, size=16))
    tokens = tiny.tokenizer(corpus.captions.tolist())
    assert (tokens[:, -1] == PAD).all()  # nothing cut: every caption ends before the last position
    assert not (tokens == UNKNOWN).any()


def test_prompt_learner_runs_on_the_word_tokenizer(tiny):
    learner = PromptLearner(TextTower(tiny.model), tiny.tokenizer, ["heart", "ellipse"], [0, 0])
    expected = tiny.model.encode_text(tiny.tokenizer(["a photo of a heart.", "a photo of a ellipse."]))
    torch.testing.assert_close(learner(), expected, rtol=0, atol=1e-5)


def test_weights_of_another_word_list_are_refused(tmp_path, tiny, monkeypatch):
    from gcctl.clip.checkpoint import save_checkpoint
    from gcctl.clip.factory import build_clip

    path = save_checkpoint(tiny, tmp_path / "model.pt")
    assert torch.load(path, weights_only=True)["vocabulary"] == tiny.tokenizer.digest
    build_clip("gcctl-tiny", str(path))  # the same list: loads
    other = WordTokenizer(["another", "list"], context_length=24, vocab_size=512)
    monkeypatch.setattr("gcctl.clip.factory.word_tokenizer", lambda name: other)
    with pytest.raises(GcctlError, match="another word list"):
        build_clip("gcctl-tiny", str(path))
