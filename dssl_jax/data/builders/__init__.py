"""Which builder reads `config.data`, where it writes, and `prepare` (main's --mode=prepare)."""
import dataclasses
import os
import sys

from absl import logging
import ml_collections
import tensorflow_datasets as tfds

from dssl_jax.data import captions, synthetic
from dssl_jax.data.builders import annotations
from dssl_jax.data.builders.person_text import CuhkPedes, IcfgPedes, PersonTextConfig, RstpReid
from dssl_jax.errors import UserError

BUILDERS = {'cuhk_pedes': CuhkPedes, 'icfg_pedes': IcfgPedes, 'rstp_reid': RstpReid,
            'synthetic': CuhkPedes}  # the synthetic set is written in the CUHK-PEDES layout


def data_dir(data: ml_collections.ConfigDict) -> str:
  return os.path.expanduser(data.data_dir or '~/tensorflow_datasets')


def _synthetic_name(data) -> str:
  s = data.synthetic
  name = f'synthetic_ids{s.identities}_img{s.images_per_identity}_seed{s.seed}'
  if tuple(s.split_fractions) != synthetic.SPLIT_FRACTIONS:
    name += '_split' + '-'.join(map(str, synthetic.split_counts(s.identities, s.split_fractions)))
  if tuple(s.image_size) != synthetic.IMAGE_SIZE:
    name += '_size{}x{}'.format(*s.image_size)
  return name


def manual_dir(data: ml_collections.ConfigDict) -> str:
  """The raw folder: config.data.manual_dir, or for synthetic a folder under data_dir."""
  if data.manual_dir:
    return os.path.expanduser(data.manual_dir)
  if data.name == 'synthetic':
    return os.path.join(data_dir(data), 'downloads', 'manual', _synthetic_name(data))
  raise UserError(f'config.data.manual_dir is empty: point it at the {data.name} folder '
                  'as published (annotation json + imgs/)')


def get_builder(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  if data.name not in BUILDERS:
    raise UserError(f'config.data.name {data.name!r} is not one of {sorted(BUILDERS)}')
  name = _synthetic_name(data) if data.name == 'synthetic' else 'default'
  config = PersonTextConfig(name=name, tagger=data.tagger, max_phrases=data.max_phrases,
                            min_word_count=data.min_word_count, strict=data.strict)
  return BUILDERS[data.name](data_dir=data_dir(data), config=config)


def generate_synthetic(data: ml_collections.ConfigDict) -> bool:
  """Writes the synthetic raw data that `data` names, unless it is there; whether it wrote."""
  raw = manual_dir(data)
  if data.name != 'synthetic' or os.path.isfile(os.path.join(raw, synthetic.ANNOTATION_FILE)):
    return False
  s = data.synthetic
  print(f'generating the synthetic raw dataset in {raw} ...', flush=True)
  synthetic.generate(raw, s.identities, s.seed, s.images_per_identity,
                     split_fractions=tuple(s.split_fractions), size=tuple(s.image_size))
  return True


def prepare(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Builds the dataset once (generating the synthetic raw data first if needed)."""
  generate_synthetic(data)
  raw = manual_dir(data)
  builder = get_builder(data)
  if builder.is_prepared():
    _check_build_options(builder)
    print(f'dataset already built: {builder.data_dir}', flush=True)
    print(annotations.BuildSummary(**_summary_fields(builder)).format(), flush=True)
    return builder
  annotations.load_annotations(BUILDERS[data.name].FORMAT, raw)  # clear errors before TFDS runs
  captions.resolve_tagger(data.tagger)
  if not sys.stderr.isatty():  # TFDS's bars redraw with escape codes: noise in a log file
    tfds.disable_progress_bar()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw))
  logging.info('built %s', builder.data_dir)
  print(f'dataset built: {builder.data_dir}', flush=True)
  return builder


def _summary_fields(builder) -> dict:
  saved = builder.info.metadata['build_summary']
  return {'kept': saved['kept'], 'skipped': saved['skipped']}


def _check_build_options(builder):
  """A dataset built with other phrase/vocabulary options must not be used silently. The tagger
  compared is the one the phrases were made with ('auto' takes any)."""
  saved = dict(builder.info.metadata['build_options'])
  saved['tagger'] = builder.info.metadata.get('tagger') or saved.get('tagger')
  wanted = dataclasses.asdict(builder.builder_config)
  if wanted['tagger'] == 'auto':
    wanted.pop('tagger')
  changed = {k: (saved.get(k), v) for k, v in wanted.items()
             if k in ('tagger', 'max_phrases', 'min_word_count') and saved.get(k) != v}
  if changed:
    raise UserError(f'{builder.data_dir} was built with other options '
                    f'({", ".join(f"{k}: built {a!r}, asked {b!r}" for k, (a, b) in changed.items())}'
                    '): delete it or set config.data.data_dir to another folder')
