"""The three published annotation formats, read as records, with every bad entry accounted for.

CUHK-PEDES `reid_raw.json` and ICFG-PEDES `ICFG-PEDES.json`: [{split, captions, file_path,
processed_tokens, id}]; RSTPReid `data_captions.json`: [{id, img_path, captions, split}]. Images lie
under `<manual_dir>/imgs/`. Captions are tokenized by us for every format (one path; RSTPReid has
no tokens), and their noun phrases extracted here, once.
"""
import collections
import dataclasses
import json
import os
from typing import Callable

from absl import logging
import tqdm

from dssl_jax.data import captions as captions_lib
from dssl_jax.data.images import check_image
from dssl_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Format:
  annotation_file: str
  path_key: str
  splits: tuple[str, ...]


FORMATS = {
    'cuhk_pedes': Format('reid_raw.json', 'file_path', ('train', 'val', 'test')),
    'icfg_pedes': Format('ICFG-PEDES.json', 'file_path', ('train', 'test')),
    'rstp_reid': Format('data_captions.json', 'img_path', ('train', 'val', 'test')),
}
IMAGE_FOLDER = 'imgs'


@dataclasses.dataclass
class Caption:
  text: str
  tokens: list[str]
  phrases: list[list[str]]


@dataclasses.dataclass
class Record:
  """One image with its captions: one example of the built dataset."""
  file_path: str  # relative to <manual_dir>/imgs
  person_id: int
  split: str
  captions: list[Caption]


@dataclasses.dataclass
class BuildSummary:
  """What was kept and what was skipped, and why; printed and saved with the dataset."""
  kept: dict = dataclasses.field(default_factory=dict)  # split -> {images, captions, identities}
  skipped: list = dataclasses.field(default_factory=list)  # [{file, reason}]

  def skip(self, file: str, reason: str, strict: bool):
    if strict:
      raise UserError(f'{file}: {reason} (config.data.strict=True stops at the first bad entry)')
    logging.warning('skipped %s: %s', file, reason)
    self.skipped.append({'file': file, 'reason': reason})

  def as_dict(self) -> dict:
    return {'kept': self.kept, 'skipped_by_reason': dict(collections.Counter(
        s['reason'].split(':')[0] for s in self.skipped)), 'skipped': self.skipped}

  def format(self) -> str:
    lines = ['build summary:']
    for split, kept in self.kept.items():
      lines.append(f'  {split}: {kept["images"]} images, {kept["captions"]} captions, '
                   f'{kept["identities"]} identities')
    reasons = self.as_dict()['skipped_by_reason']
    lines.append(f'  skipped: {len(self.skipped)} entries' + (
        ' (' + ', '.join(f'{r}: {n}' for r, n in sorted(reasons.items())) + ')' if reasons else ''))
    return '\n'.join(lines)


def load_annotations(name: str, manual_dir: str) -> list:
  """The raw json list of dataset `name`, or one clear UserError naming the path."""
  fmt = FORMATS[name]
  if not os.path.isdir(manual_dir):
    raise UserError(f'config.data.manual_dir {manual_dir!r} is not a folder: point it at the '
                    f'{name} folder that holds {fmt.annotation_file} and {IMAGE_FOLDER}/')
  path = os.path.join(manual_dir, fmt.annotation_file)
  if not os.path.isfile(path):
    raise UserError(f'{path} not found: {name} expects its annotation file {fmt.annotation_file} '
                    f'in config.data.manual_dir')
  try:
    with open(path) as f:
      entries = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f'{path} is not valid JSON ({e})') from None
  if not isinstance(entries, list):
    raise UserError(f'{path}: expected a JSON list of entries, got {type(entries).__name__}')
  return entries


def read_records(name: str, manual_dir: str, phrase_extractor: Callable[[str], list],
                 strict: bool = False) -> tuple[list[Record], BuildSummary]:
  """Valid records of every split; each skipped entry or caption is logged and summarised."""
  fmt = FORMATS[name]
  entries = load_annotations(name, manual_dir)
  summary = BuildSummary()
  records = []
  for i, entry in enumerate(tqdm.tqdm(entries, desc='reading annotations', unit='image',
                                     disable=None, leave=False)):
    file = entry.get(fmt.path_key) if isinstance(entry, dict) else None
    where = file if isinstance(file, str) and file else f'entry {i}'
    if not isinstance(entry, dict) or not isinstance(file, str) or not file:
      summary.skip(where, f'no {fmt.path_key}', strict)
      continue
    person_id = entry.get('id')
    if isinstance(person_id, str) and person_id.strip().isdigit():
      person_id = int(person_id)
    if not isinstance(person_id, int) or isinstance(person_id, bool):
      summary.skip(where, 'missing id', strict)
      continue
    split = entry.get('split')
    if split not in fmt.splits:
      summary.skip(where, f'bad split: {split!r} is not one of {fmt.splits}', strict)
      continue
    texts = entry.get('captions')
    if isinstance(texts, str):
      texts = [texts]
    if not isinstance(texts, list):
      summary.skip(where, 'no captions', strict)
      continue
    problem = check_image(os.path.join(manual_dir, IMAGE_FOLDER, file))
    if problem:
      summary.skip(where, problem, strict)
      continue
    tokens = [captions_lib.tokenize(t) if isinstance(t, str) else [] for t in texts]
    if not any(tokens):
      summary.skip(where, 'empty caption: no caption with a word', strict)
      continue
    for j in [j for j, t in enumerate(tokens) if not t]:
      summary.skip(f'{where} caption {j}', 'empty caption', strict)
    records.append(Record(file, person_id, split, [
        Caption(text, words, phrase_extractor(text)) for text, words in zip(texts, tokens)
        if words]))
  for split in fmt.splits:
    in_split = [r for r in records if r.split == split]
    summary.kept[split] = {'images': len(in_split),
                           'captions': sum(len(r.captions) for r in in_split),
                           'identities': len({r.person_id for r in in_split})}
  return records, summary
