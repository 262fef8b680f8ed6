import nltk
import pytest

from dssl_jax.data import captions
from dssl_jax.errors import UserError


def test_tokenize_lowercases_and_drops_punctuation():
  assert captions.tokenize("A Man's black-jacket, (2) shoes!") == [
      'a', 'man', 's', 'black', 'jacket', '2', 'shoes']
  assert captions.tokenize(' ,.; ') == []


def test_lexicon_tagger_phrases_in_order():
  extract = captions.PhraseExtractor(captions.lexicon_tagger())
  text = ('The woman with long blonde hair is wearing a red t-shirt and blue jeans. She carries '
          'a black leather backpack.')
  assert extract(text) == [['the', 'woman'], ['long', 'blonde', 'hair'], ['a', 'red', 't', 'shirt'],
                             ['blue', 'jeans'], ['a', 'black', 'leather', 'backpack']]


def test_phrases_are_capped_and_empty_caption_gives_none():
  extract = captions.PhraseExtractor(captions.lexicon_tagger(), max_phrases=2)
  assert len(extract('a red hat and a blue coat and white shoes')) == 2
  assert extract('') == [] and extract(' , . ') == []
  assert captions.PhraseExtractor(captions.lexicon_tagger())('is walking') == []


@pytest.mark.parametrize('tagger', ['lexicon', 'perceptron'])
def test_punctuation_keeps_phrases_apart(tagger):
  """Tagged with its punctuation, as NLTK's pipeline expects: a comma ends a phrase."""
  extract = captions.PhraseExtractor(
      captions.lexicon_tagger() if tagger == 'lexicon' else _trained_perceptron())
  assert extract('A man wears a red logo, dark jeans; white shoes.') == [
      ['a', 'man'], ['a', 'red', 'logo'], ['dark', 'jeans'], ['white', 'shoes']]
  # the phrases hold the words tokenize() gives, never punctuation
  assert captions.tokenize_for_tagging("A man's t-shirt, (2) shoes!") == [
      'a', 'man', 's', 't', 'shirt', ',', '(', '2', ')', 'shoes', '!']


def _trained_perceptron():
  """A real NLTK perceptron tagger, trained here on a few tagged sentences (no download)."""
  tagged = [[('a', 'DT'), ('man', 'NN'), ('wears', 'VBZ'), ('a', 'DT'), ('green', 'JJ'),
             ('coat', 'NN')],
            [('the', 'DT'), ('girl', 'NN'), ('has', 'VBZ'), ('brown', 'JJ'), ('boots', 'NNS')],
            [('she', 'PRP'), ('carries', 'VBZ'), ('a', 'DT'), ('small', 'JJ'), ('bag', 'NN')],
            [('a', 'DT'), ('man', 'NN'), ('wears', 'VBZ'), ('a', 'DT'), ('red', 'JJ'),
             ('logo', 'NN'), (',', ','), ('dark', 'JJ'), ('jeans', 'NNS'),
             (';', ':'), ('white', 'JJ'), ('shoes', 'NNS'), ('.', '.')]]
  tagger = nltk.tag.PerceptronTagger(load=False)
  tagger.train(tagged * 5, nr_iter=5)
  return tagger


def test_real_nltk_perceptron_path_with_a_trained_tagger():
  extract = captions.PhraseExtractor(_trained_perceptron())
  assert extract('a man wears a green coat') == [['a', 'man'], ['a', 'green', 'coat']]


def test_make_tagger_uses_perceptron_when_installed(monkeypatch):
  trained = _trained_perceptron()
  monkeypatch.setattr(captions, 'perceptron_available', lambda: True)
  monkeypatch.setattr(nltk.tag, 'PerceptronTagger', lambda: trained)
  assert captions.make_tagger('auto') is trained
  assert captions.make_tagger('perceptron') is trained


def test_make_tagger_falls_back_and_says_how_to_install(monkeypatch, caplog):
  monkeypatch.setattr(captions, 'perceptron_available', lambda: False)
  tagger = captions.make_tagger('auto')
  assert tagger.tag(['a', 'red', 'coat']) == [('a', 'DT'), ('red', 'JJ'), ('coat', 'NN')]
  assert captions.INSTALL_PERCEPTRON in caplog.text
  assert captions.resolve_tagger('auto') == 'lexicon'
  with pytest.raises(UserError, match="tagger='perceptron'.*nltk.downloader averaged_perceptron"):
    captions.make_tagger('perceptron')
  with pytest.raises(UserError, match='config.data.tagger'):
    captions.make_tagger('spacy')


def test_vocabulary_min_count_order_and_unknown_words():
  vocab = captions.build_vocabulary([['a', 'red', 'coat'], ['a', 'red', 'hat'], ['a', 'cap']], 2)
  assert vocab == ['<pad>', '<unk>', 'a', 'red']
  assert captions.encode(['a', 'blue', 'red'], vocab) == [2, 1, 3]
