"""Search your own person crops with a trained model, in plain English.

  python -m dssl_jax.search index --workdir W --images DIR [--index IDX]
  python -m dssl_jax.search query --workdir W [--index IDX] "a man in a black jacket" [--top K]
  python -m dssl_jax.search recall --workdir W [--index IDX] --queries_file F [--top K]

Installed, `dssl-jax-search` is the same command.

`index` encodes every jpg/png under DIR (resized like the test pipeline); rerunning encodes only
new or changed files. `query` ranks the index for each sentence in two stages (cos(V_P, T_P) over
every image, then the full Sim_TI on the best `--candidates`; see dssl_jax/index.py); `--exact`
scores every image with Sim_TI. `recall` measures how much of the exact top-K the two stages keep.
A thin shell over `dssl_jax.Retriever`; jax and TensorFlow are imported after parsing.
"""
import json
import os
import sys
import time

from absl import app
from absl import flags

from dssl_jax import cli
from dssl_jax.errors import UserError

flags.DEFINE_string('workdir', None, 'A trained dssl_jax workdir (python -m dssl_jax.main).')
flags.DEFINE_string('images', None, 'index: the folder of images (searched recursively).')
flags.DEFINE_string('index', None, 'The index folder (default: WORKDIR/index).')
flags.DEFINE_integer('top', 10, 'query, recall: how many results per query.')
flags.DEFINE_string('queries_file', None, 'query, recall: more queries, one per line.')
flags.DEFINE_bool('json', False, 'query: print one JSON object per query instead of text.')
flags.DEFINE_integer('shard_size', 50_000, 'index: images per shard.')
flags.DEFINE_integer('candidates', 1000, 'query: images per query that the first stage (global '
                     'features) passes to the full Sim_TI.')
flags.DEFINE_bool('exact', False, 'query: score every image with the full Sim_TI (slow).')
FLAGS = flags.FLAGS


def main(argv):
  """The search command line.

  Args:
    argv: the program name, then `index`, `query` (followed by the sentences) or `recall`.

  Returns:
    None; exits with 1 and one line on stderr on bad input.
  """
  cli.quiet_logging()
  if len(argv) < 2 or argv[1] not in ('index', 'query', 'recall'):
    raise app.UsageError('usage: python -m dssl_jax.search index|query|recall --workdir W ...')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  if FLAGS.top < 1:
    cli.fail(f'--top {FLAGS.top}: give at least 1 result per query')
  from dssl_jax import index as index_lib, plots  # pylint: disable=g-import-not-at-top
  from dssl_jax.retriever import Retriever  # pylint: disable=g-import-not-at-top
  folder = FLAGS.index or os.path.join(FLAGS.workdir, 'index')
  try:
    if argv[1] == 'index':
      if not FLAGS.images:
        raise UserError('index needs --images DIR')
      counts = Retriever.from_workdir(FLAGS.workdir).build_index(FLAGS.images, folder,
                                                                 FLAGS.shard_size)
      print(f'{counts["found"]} images found, {counts["encoded"]} encoded, '
            f'{counts["unreadable"]} unreadable, {counts["indexed"]} in {folder}')
      return
    texts = list(argv[2:])
    if FLAGS.queries_file:
      with open(FLAGS.queries_file) as f:
        texts += [line.strip() for line in f if line.strip()]
    if not texts:
      raise UserError(f'{argv[1]} needs at least one sentence (or --queries_file)')
    retriever = Retriever.from_workdir(FLAGS.workdir)
    index = retriever.open_index(folder)
    if argv[1] == 'recall':
      shares = index_lib.recall(index, retriever.encode_texts(texts), FLAGS.top,
                                *retriever.sim_ti_weights)
      for m, share in shares.items():
        print(f'{m} candidates: {100 * share:.2f}% of the exact top-{FLAGS.top} of '
              f'{len(texts)} queries')
      return
    start = time.time()
    results = retriever.search(texts, index, FLAGS.top, None if FLAGS.exact else FLAGS.candidates)
    seconds = time.time() - start
    for text, hits in zip(texts, results):
      words = retriever.unknown_words(text)
      if FLAGS.json:
        print(json.dumps({'query': text, 'unknown_words': words, 'seconds': round(seconds, 3),
                          'results': [{'path': p, 'score': s} for p, s in hits]}))
        continue
      print(f'\n{text}' + (f'\n  unknown words (ignored): {", ".join(words)}' if words else ''))
      for rank, (path, score) in enumerate(hits, 1):
        print(f'  {rank:3d}. {score:7.4f}  {path}')
    sheet = os.path.join(folder, 'query_results.png')
    plots.contact_sheet(sheet, texts, [[p for p, _ in hits] for hits in results],
                          index.manifest['images'])
    print(f'\n{len(texts)} queries in {seconds:.2f}s; contact sheet: {sheet}', file=sys.stderr)
  except UserError as e:
    cli.fail(str(e))


def run():
  """The console script `dssl-jax-search`."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
