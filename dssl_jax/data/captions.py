"""Caption text at build time: tokens, noun phrases (paper 4.1.2) and the train vocabulary.

Phrases are extracted once, when a dataset is built, and stored with each caption; the model only
sees word ids. The paper's phrases come from NLTK's perceptron tagger, a separate download: the
real-data configs ask for it and stop if it is missing. A small lexicon tagger that needs no
download serves the synthetic data, whose templated captions use only words it knows.
"""
import collections
import re
from typing import Iterable, Protocol, Sequence

from absl import logging

from dssl_jax.errors import UserError

PAD, UNK = '<pad>', '<unk>'  # ids 0 and 1 of every vocabulary

# A noun phrase: an optional determiner/possessive/number, any adjectives, participles or nouns,
# ending in a noun ("a black leather jacket", "her long hair", "white shoes").
NOUN_PHRASE_GRAMMAR = r'NP: {<DT|PRP\$|CD>?<JJ.*|VBN|NN.*>*<NN.*>}'

PERCEPTRON_RESOURCE = 'averaged_perceptron_tagger_eng'
INSTALL_PERCEPTRON = f'python -m nltk.downloader {PERCEPTRON_RESOURCE}'

_WORD = re.compile(r'[a-z0-9]+')
# `tokenize`'s words, and the punctuation that separates phrases as tokens of its own.
_WORD_OR_PUNCTUATION = re.compile(r'[a-z0-9]+|[,.;:!?()]')


def _nltk():
  """nltk, imported where phrases are made: the package installs and encodes images without it."""
  try:
    import nltk  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("noun phrases need nltk, which dssl_jax's data extra installs: "
                    "pip install 'dssl_jax[data]'") from None
  return nltk


class Tagger(Protocol):

  def tag(self, tokens: Sequence[str]) -> list[tuple[str, str]]:
    ...


def tokenize(text: str) -> list[str]:
  """Lowercases and keeps runs of letters/digits: punctuation is dropped, never a token."""
  return _WORD.findall(text.lower())


def tokenize_for_tagging(text: str) -> list[str]:
  """`tokenize`'s words with the punctuation between them kept: taggers and the chunker need it
  ("a red logo, dark blue jeans" holds two phrases, not one)."""
  return _WORD_OR_PUNCTUATION.findall(text.lower())


# The fallback tagger: closed-class words and the vocabulary of pedestrian descriptions, then
# suffix rules, then NN. Colours and sizes are adjectives, as in "a black jacket".
_LEXICON = {
    **dict.fromkeys('a an the this that these those each every another'.split(), 'DT'),
    **dict.fromkeys('his her their its my your'.split(), 'PRP$'),
    **dict.fromkeys('he she it they him them i you we who'.split(), 'PRP'),
    **dict.fromkeys('with in on of at over under around across by from for near into behind '
                    'above below along through without like while as than'.split(), 'IN'),
    **dict.fromkeys('and or but nor so'.split(), 'CC'),
    **dict.fromkeys('to'.split(), 'TO'),
    **dict.fromkeys('is has wears carries holds appears seems looks walks stands'.split(), 'VBZ'),
    **dict.fromkeys('are have wear carry hold appear seem look walk stand'.split(), 'VBP'),
    **dict.fromkeys('was were had'.split(), 'VBD'),
    **dict.fromkeys('be'.split(), 'VB'),
    **dict.fromkeys('also very slightly probably maybe perhaps quite rather not just too really '
                    'kind sort somewhat possibly likely um uh well actually'.split(), 'RB'),
    **dict.fromkeys('black white gray grey red blue green yellow orange purple pink brown beige '
                    'navy dark light bright pale short long big small large little tall thin '
                    'young old middle medium loose tight plain casual blond blonde curly '
                    'straight bald single other several sleeveless shoulder'.split(), 'JJ'),
    **dict.fromkeys('one two three four'.split(), 'CD'),
    **{p: p for p in ',.:'}, ';': ':', '!': '.', '?': '.', '(': '(', ')': ')',  # Penn's tags
}
_SUFFIX_RULES = [
    (r'^\d+$', 'CD'),
    (r'.*ing$', 'VBG'),
    (r'.*ed$', 'VBN'),
    (r'.*ly$', 'RB'),
    (r'.*(ful|ous|ish|ive|able)$', 'JJ'),
    (r'.*ss$', 'NN'),
    (r'.*s$', 'NNS'),
    (r'.*', 'NN'),
]


def lexicon_tagger() -> Tagger:
  """A download-free POS tagger: a lexicon of ~250 words, suffix rules, NN by default."""
  nltk = _nltk()
  return nltk.UnigramTagger(model=_LEXICON, backoff=nltk.RegexpTagger(_SUFFIX_RULES))


def perceptron_available() -> bool:
  try:
    _nltk().data.find(f'taggers/{PERCEPTRON_RESOURCE}/')
    return True
  except LookupError:
    return False


def resolve_tagger(kind: str = 'auto') -> str:
  """The tagger `kind` means here: 'perceptron' or 'lexicon' ('auto': perceptron if installed)."""
  if kind not in ('auto', 'perceptron', 'lexicon'):
    raise UserError(f"config.data.tagger must be 'auto', 'perceptron' or 'lexicon', got {kind!r}")
  if kind == 'lexicon':
    return kind
  if perceptron_available():
    return 'perceptron'
  if kind == 'perceptron':
    raise UserError(f"config.data.tagger='perceptron' but NLTK's perceptron tagger is not "
                    f'installed; install it with: {INSTALL_PERCEPTRON} (--config.data.tagger='
                    "lexicon builds other noun phrases than the paper's NLTK pipeline)")
  logging.warning("NLTK's perceptron tagger is not installed: using the built-in lexicon tagger "
                  '(for the real one: %s)', INSTALL_PERCEPTRON)
  return 'lexicon'


def make_tagger(kind: str = 'auto') -> Tagger:
  """kind: 'perceptron' (NLTK's, must be installed), 'lexicon', or 'auto' (the first that works)."""
  if resolve_tagger(kind) == 'perceptron':
    return _nltk().tag.PerceptronTagger()
  return lexicon_tagger()


class PhraseExtractor:
  """Noun phrases of a caption, in sentence order, at most `max_phrases` (paper 4.1.2).

  Tokens are tagged and chunked with their punctuation, as NLTK's pipeline expects; phrases hold
  only words, the same words `tokenize` gives.
  """

  def __init__(self, tagger: Tagger, max_phrases: int = 26):
    self.tagger = tagger
    self.max_phrases = max_phrases
    self.chunker = _nltk().RegexpParser(NOUN_PHRASE_GRAMMAR)

  def __call__(self, text: str) -> list[list[str]]:
    tokens = tokenize_for_tagging(text)
    if not tokens:
      return []
    tree = self.chunker.parse(self.tagger.tag(tokens))
    phrases = [[word for word, _ in subtree.leaves() if _WORD.fullmatch(word)]
               for subtree in tree.subtrees(lambda t: t.label() == 'NP')]
    return [p for p in phrases if p][:self.max_phrases]


def build_vocabulary(token_lists: Iterable[Sequence[str]], min_count: int = 2) -> list[str]:
  """Words seen at least `min_count` times, most frequent first; index 0 = PAD, 1 = UNK."""
  counts = collections.Counter(word for tokens in token_lists for word in tokens)
  kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
  return [PAD, UNK] + kept


def encode(tokens: Sequence[str], vocabulary: Sequence[str]) -> list[int]:
  """Word ids with unknown words mapped to UNK (the pipeline does the same in TF)."""
  index = {w: i for i, w in enumerate(vocabulary)}
  return [index.get(w, 1) for w in tokens]
