"""TFDS builders (manual download) for CUHK-PEDES, ICFG-PEDES and RSTPReid.

One example per image: the encoded image as published, its person id, the train label (ids
relabelled 0..Q-1 on the train split, -1 elsewhere), and its captions, each with its tokens and
noun phrases (joined by spaces and '|'), computed once here. The train vocabulary, the number of
train identities and the build summary are saved in the dataset's metadata.
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from dssl_jax.data import captions as captions_lib
from dssl_jax.data.builders import annotations
from dssl_jax.errors import UserError

PHRASE_SEPARATOR = '|'


@dataclasses.dataclass
class PersonTextConfig(tfds.core.BuilderConfig):
  """Build-time options; `name` tells builds of different raw folders apart (e.g. synthetic)."""
  tagger: str = 'auto'
  max_phrases: int = 26
  min_word_count: int = 2
  strict: bool = False


class PersonTextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared by the three datasets; subclasses name their annotation format."""

  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Point config.data.manual_dir at the dataset folder as published: the annotation json and '
      'imgs/ side by side.')
  FORMAT: str

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'file_path': tfds.features.Text(),
            'person_id': tfds.features.Scalar(dtype=np.int64),
            'label': tfds.features.Scalar(dtype=np.int64),
            'captions': tfds.features.Sequence({
                'text': tfds.features.Text(),
                'tokens': tfds.features.Text(),
                'phrases': tfds.features.Text(),
            }),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    manual_dir = str(dl_manager.manual_dir)
    tagger = captions_lib.resolve_tagger(config.tagger)
    extractor = captions_lib.PhraseExtractor(captions_lib.make_tagger(tagger), config.max_phrases)
    records, summary = annotations.read_records(self.FORMAT, manual_dir, extractor,
                                                config.strict)
    train = [r for r in records if r.split == 'train']
    labels = {pid: i for i, pid in enumerate(sorted({r.person_id for r in train}))}
    self.info.metadata.update({
        'vocabulary': captions_lib.build_vocabulary(
            (c.tokens for r in train for c in r.captions), config.min_word_count),
        'num_train_identities': len(labels),
        'tagger': tagger,  # the one the phrases were made with; queries must use the same
        'build_summary': summary.as_dict(),
        'build_options': dataclasses.asdict(config) | {'manual_dir': manual_dir},
    })
    print(summary.format(), flush=True)
    if not train:
      raise UserError(f'{manual_dir}: no usable train entry, nothing to train on (see the build '
                      'summary above)')
    # A split without entries is left out (TFDS cannot write an empty one): no val, no best epoch.
    return {split: self._generate_examples(manual_dir, [r for r in records if r.split == split],
                                           labels)
            for split in annotations.FORMATS[self.FORMAT].splits if summary.kept[split]['images']}

  def _generate_examples(self, manual_dir, records, labels):
    for record in records:
      yield record.file_path, {
          'image': f'{manual_dir}/{annotations.IMAGE_FOLDER}/{record.file_path}',
          'file_path': record.file_path,
          'person_id': record.person_id,
          'label': labels.get(record.person_id, -1),
          'captions': [{'text': c.text, 'tokens': ' '.join(c.tokens),
                        'phrases': PHRASE_SEPARATOR.join(' '.join(p) for p in c.phrases)}
                       for c in record.captions],
      }


class CuhkPedes(PersonTextBuilder):
  """CUHK-PEDES (reid_raw.json); also reads the synthetic set, written in this layout."""
  FORMAT = 'cuhk_pedes'


class IcfgPedes(PersonTextBuilder):
  """ICFG-PEDES (ICFG-PEDES.json): train and test splits only."""
  FORMAT = 'icfg_pedes'


class RstpReid(PersonTextBuilder):
  """RSTPReid (data_captions.json, img_path, no tokens)."""
  FORMAT = 'rstp_reid'
