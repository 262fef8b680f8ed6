"""CLIP's BPE tokenizer against open_clip's (the reference, with its merges file), and the caption
encoding for DSSL (with a made-up merges file: tests.helpers.write_bpe_merges)."""
import gzip

import numpy as np
import pytest

from dssl_jax.data.clip_tokenizer import ClipTokenizer
from dssl_jax.errors import UserError
from tests.helpers import reference

open_clip_tokenizer = reference('open_clip.tokenizer')
TEXTS = [
    'A woman wearing a red logo, dark blue jeans and white shoes.',
    "He's carrying a 12-inch bag; café &amp; naïve  \n\t the T-SHIRT's  ",
    'Ünïcödé ΑΒΓ 汉字 ﬁne 😀 — ok',
    '',
    'x' * 300,  # one piece longer than the context
    ' '.join(['the man in the grey coat'] * 20),  # many pieces: cut at the context
]


@pytest.fixture(scope='module')
def tokenizer(bpe_path):
  return ClipTokenizer(bpe_path)


@pytest.mark.parametrize('length', [77, 16])
def test_ids_equal_open_clip(length):
  bpe = open_clip_tokenizer.default_bpe()
  ours, theirs = ClipTokenizer(bpe), open_clip_tokenizer.SimpleTokenizer(bpe)
  np.testing.assert_array_equal(ours(TEXTS, length), theirs(TEXTS, length).numpy())
  assert ours.vocab_size == theirs.vocab_size == 49408


def test_made_up_merges_hold_their_words_whole_and_tokenize_any_text(tokenizer):
  """The made-up file is a CLIP vocabulary of the real size: its words are one token each."""
  rows = tokenizer(TEXTS, 77)
  assert tokenizer.vocab_size == 49408 and rows.shape == (len(TEXTS), 77)
  assert (rows[:, 0] == 49406).all() and (rows == 49407).sum(axis=1).tolist() == [1] * len(TEXTS)
  assert len(tokenizer.encode('a woman in dark blue jeans')) == 6
  assert len(tokenizer.encode('wolf')) > 1  # not among its words: pieces


def test_a_file_that_is_not_the_merges_list_is_one_line(tmp_path):
  with pytest.raises(UserError, match='cannot read the BPE merges'):
    ClipTokenizer(str(tmp_path / 'missing.txt.gz'))
  short = tmp_path / 'short.txt.gz'
  with gzip.open(short, 'wt') as f:
    f.write('#version\na b\n')
  with pytest.raises(UserError, match='not a CLIP merges file'):
    ClipTokenizer(str(short))


def test_span_phrases_mark_their_tokens_in_the_sentence(tokenizer):
  text = 'A woman wearing a red logo, dark blue jeans and a red logo on her bag.'
  phrases = ['a woman', 'a red logo', 'dark blue jeans', 'a red logo', 'purple hat']
  tokens, ids, span = tokenizer.caption(text, phrases, 24, 6, 6, 'span')
  assert ids.shape == span.shape == (6, 24)
  sentence = tokenizer([text], 24)[0]
  np.testing.assert_array_equal(tokens, sentence)
  for k, phrase in enumerate(phrases[:4]):
    np.testing.assert_array_equal(tokens[span[k]], tokenizer.encode(phrase), err_msg=phrase)
  first, second = np.flatnonzero(span[1]), np.flatnonzero(span[3])
  assert second[0] > first[-1]  # a repeated phrase takes the next occurrence
  assert not span[4:].any()  # not in the sentence; and no fifth phrase slot used
  np.testing.assert_array_equal(ids, np.where(span, tokens, 0))


def test_separate_phrases_are_token_rows_of_their_own(tokenizer):
  phrases = ['a woman', 'dark blue jeans']
  tokens, ids, mask = tokenizer.caption('a woman in dark blue jeans', phrases, 12, 3, 5,
                                        'separate')
  np.testing.assert_array_equal(tokens, tokenizer(['a woman in dark blue jeans'], 12)[0])
  np.testing.assert_array_equal(ids[:2], tokenizer(phrases, 5))
  assert not ids[2].any() and mask.sum(-1).tolist() == [4, 5, 0]
