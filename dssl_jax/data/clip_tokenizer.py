"""CLIP's byte-level BPE tokenizer, read from the merges file that open_clip and OpenAI ship
(bpe_simple_vocab_16e6.txt.gz; config.model.clip.bpe_path): nothing is downloaded.

Text is cleaned (ftfy, HTML entities, whitespace), lower-cased and split into words, numbers and
punctuation runs; each piece's UTF-8 bytes map to printable characters, the last one marked as a
word end, and the merges apply lowest rank first. Ids: the 256 byte characters (printable ones
first), their 256 word-end forms, one per merge, then <start_of_text> and <end_of_text> (the
largest id, which the text encoder pools at).
"""
import gzip
import html

import ftfy
import ml_collections
import numpy as np
import regex

from dssl_jax.data import formats
from dssl_jax.errors import UserError

_MERGES = 49152 - 256 - 2  # the merges CLIP's vocabulary uses (the file holds more)
_WORD_END = '</w>'
_SPECIAL = ('<start_of_text>', '<end_of_text>')
_PIECES = regex.compile(  # the special tokens, contractions, letter runs, digits, other runs
    r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)


def _byte_characters() -> dict[int, str]:
  """A printable character for each byte value, in vocabulary order: printable Latin-1 bytes stand
  for themselves and come first, the others (controls, space) follow as 256 + their rank, so no
  piece contains whitespace."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
               *range(ord('®'), ord('ÿ') + 1)]
  others = [b for b in range(256) if b not in printable]
  return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}


def clean(text: str) -> str:
  text = html.unescape(html.unescape(ftfy.fix_text(text)))
  return ' '.join(text.split()).lower()


class ClipTokenizer:
  """`encode(text)` -> ids; `__call__(texts, length)` -> [N, length] int32 rows
  <start_of_text> ids <end_of_text> 0..., cut to `length` with <end_of_text> kept last."""

  def __init__(self, bpe_path: str):
    try:
      with gzip.open(bpe_path, 'rt', encoding='utf-8') as f:
        lines = f.read().split('\n')[1:_MERGES + 1]
    except (OSError, EOFError, UnicodeDecodeError) as e:
      raise UserError(f'config.model.clip.bpe_path {bpe_path!r}: cannot read the BPE merges '
                      f'({e}); it is bpe_simple_vocab_16e6.txt.gz from open_clip') from None
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != _MERGES or any(len(m) != 2 for m in merges):
      raise UserError(f'config.model.clip.bpe_path {bpe_path!r}: not a CLIP merges file '
                      f'(expected {_MERGES} merge pairs after the header line)')
    self._byte_chars = _byte_characters()
    chars = list(self._byte_chars.values())
    vocab = chars + [c + _WORD_END for c in chars]
    vocab += [a + b for a, b in merges] + list(_SPECIAL)
    self.ids = {token: i for i, token in enumerate(vocab)}
    self.vocab_size = len(vocab)
    self.start_of_text, self.end_of_text = self.ids[_SPECIAL[0]], self.ids[_SPECIAL[1]]
    self._ranks = {pair: rank for rank, pair in enumerate(merges)}
    self._merged = {}  # piece -> symbols: a caption set repeats few words

  def _bpe(self, piece: str) -> tuple[str, ...]:
    """The merged symbols of one piece (byte characters), merging the lowest-ranked pair first."""
    if piece in _SPECIAL:
      return (piece,)
    if piece in self._merged:
      return self._merged[piece]
    symbols = [*piece[:-1], piece[-1] + _WORD_END]
    while len(symbols) > 1:
      ranked = [(self._ranks.get(pair, len(self._ranks)), pair)
                for pair in zip(symbols, symbols[1:])]
      rank, (first, second) = min(ranked)
      if rank == len(self._ranks):
        break
      merged, i = [], 0
      while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    self._merged[piece] = tuple(symbols)
    return self._merged[piece]

  def encode(self, text: str) -> list[int]:
    ids = []
    for piece in _PIECES.findall(clean(text)):
      chars = ''.join(self._byte_chars[b] for b in piece.encode('utf-8'))
      ids.extend(self.ids[symbol] for symbol in self._bpe(chars))
    return ids

  def __call__(self, texts: list[str], length: int = 77) -> np.ndarray:
    out = np.zeros((len(texts), length), np.int32)
    for row, text in enumerate(texts):
      ids = [self.start_of_text, *self.encode(text)][:length - 1] + [self.end_of_text]
      out[row, :len(ids)] = ids
    return out

  def caption(self, text: str, phrases: list[str], max_words: int, max_phrases: int,
              phrase_words: int, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A caption's model input: tokens [max_words] and phrases, phrase_mask [max_phrases, l].

    'separate': each phrase is a token row of its own (l = phrase_words). 'span' (l = max_words):
    phrase_mask marks where the phrase's ids occur in the sentence's tokens, the first occurrence
    after the previous phrase's (chunks come in sentence order); a phrase not found there (cut by
    the context, or split into other pieces) is left out, as a phrase beyond max_phrases is.
    """
    tokens = self([text], max_words)[0]
    phrases = phrases[:max_phrases]
    if mode == 'separate':
      rows = self(phrases, phrase_words) if phrases else np.zeros((0, phrase_words), np.int32)
      out = np.zeros((max_phrases, phrase_words), np.int32)
      out[:len(rows)] = rows
      return tokens, out, out != 0
    span = np.zeros((max_phrases, max_words), bool)
    sentence, start = tokens.tolist(), 1
    for k, phrase in enumerate(phrases):
      ids = self.encode(phrase)
      found = _find(sentence, ids, start)
      if found < 0:
        found = _find(sentence, ids, 1)
      if found >= 0 and ids:
        span[k, found:found + len(ids)] = True
        start = found + len(ids)
    return tokens, np.where(span, tokens, 0).astype(np.int32), span


def _find(sequence: list[int], part: list[int], start: int) -> int:
  """The first index >= start where `part` occurs in `sequence`, or -1."""
  for i in range(start, len(sequence) - len(part) + 1):
    if sequence[i:i + len(part)] == part:
      return i
  return -1


class ClipTextEncoder:
  """A caption's token ids and its phrases' rows, as config.model.clip.phrases wants them, the
  config checked against the tokenizer once."""

  def __init__(self, config: ml_collections.ConfigDict):
    d, k = config.data, config.model.clip
    self.tokenizer = ClipTokenizer(k.bpe_path)
    if self.tokenizer.vocab_size != k.vocab_size:
      raise UserError(f'config.model.clip.vocab_size is {k.vocab_size}, the tokenizer of '
                      f'{k.bpe_path} has {self.tokenizer.vocab_size} ids')
    for field in ('max_words', 'max_phrase_words'):
      if d[field] > k.context:
        raise UserError(f'config.data.{field} {d[field]} exceeds CLIP\'s context '
                        f'(config.model.clip.context {k.context})')
    self.shapes = ([d.max_words], [d.max_phrases, formats.phrase_length(config)])
    self.arguments = (d.max_words, d.max_phrases, d.max_phrase_words, k.phrases)

  def encode(self, text: str, phrases: list[str]) -> dict:
    tokens, phrase_ids, phrase_mask = self.tokenizer.caption(text, phrases, *self.arguments)
    return {'tokens': tokens, 'token_mask': tokens != 0, 'phrases': phrase_ids,
            'phrase_mask': phrase_mask}
