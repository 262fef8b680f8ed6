"""A run's files: orbax checkpoints and the config and vocabulary that read a workdir back.

WORKDIR/checkpoints holds the train state every N steps and at the end of each stage (a rerun
resumes from the newest readable one); WORKDIR/best holds the variables of the best epoch on val.
A step whose files do not read back is moved aside, never deleted.
"""
import contextlib
import dataclasses
import itertools
import json
import os
import sys
import tempfile
import time
import traceback
from typing import Callable

from absl import logging
from etils import epath
import flax
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

from dssl_jax import defaults
from dssl_jax.data import formats
from dssl_jax.errors import UserError

META_FILE = 'vocabulary.json'  # the dataset meta a workdir needs for inference without data
READ_LOG = 'checkpoint_reads.log'  # in the workdir: what failed reads raised and printed
# What a workdir's run is: a changed field here (or under it) would leave the checkpoints or the
# resume position wrong, so a rerun into the same workdir with it is refused. The pre-trained
# weights only start a run (an evaluation names none): they are not part of it.
RUN_FIELDS = ('seed', 'model', 'data.name', 'data.synthetic', 'data.min_word_count',
              'data.image_size', 'data.max_words', 'data.max_phrases', 'data.max_phrase_words',
              'train.batch_size', 'train.stage1_epochs')
NOT_RUN_FIELDS = ('model.backbone_weights',)
# Allowed, with a line: moved files, and a stage 2 made longer or shorter (the steps done keep
# their place: the schedule counts steps from stage 2's start).
NOTED_FIELDS = ('data.manual_dir', 'data.data_dir', 'model.clip.bpe_path', 'train.stage2_epochs')
STATE_ITEMS = ('state', 'meta')  # of a checkpoints/ step
BEST_ITEMS = ('variables', 'meta')  # of a best/ step


def manager(workdir: str, name: str, max_to_keep: int) -> ocp.CheckpointManager:
  """WORKDIR/NAME. Each manager names its barriers after its folder: both save at a step where
  validation improves, and with one name their background writes of that step meet at the same
  barrier in another process, which fails the save ("Barrier ... is already ongoing")."""
  with orbax_quiet():  # an unreadable checkpoint is reported once, when it is restored
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), name),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=name)))


@contextlib.contextmanager
def managers(workdir: str, config: ml_collections.ConfigDict):
  """(checkpoints, best) of a workdir; on exit, waits for pending saves and stops their threads."""
  both = (manager(workdir, 'checkpoints', config.train.keep_checkpoints),
          manager(workdir, 'best', 1))
  try:
    yield both
  finally:
    for m in both:
      m.wait_until_finished()
      m.close()


def save_state(checkpoints: ocp.CheckpointManager, state, stage: int):
  step = int(state.step)
  if step not in checkpoints.all_steps():
    checkpoints.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({'stage': stage, 'step': step})))


def read_state(checkpoints: ocp.CheckpointManager, step: int, abstract_state: Callable):
  """(state, meta) of checkpoint `step` onto this run's devices; abstract_state(stage) gives the
  tree to restore into (its optimizer state depends on the stage)."""
  meta = checkpoints.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  state = checkpoints.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state(meta['stage']))))['state']
  return state, meta


def latest_state(checkpoints: ocp.CheckpointManager, abstract_state: Callable):
  """read_state of the newest readable checkpoint; None when there is none."""
  return newest_readable(checkpoints, lambda step: read_state(checkpoints, step, abstract_state))


def best_r1(best: ocp.CheckpointManager) -> float:
  """Val R1 of the best checkpoint so far (-1 without one)."""
  meta = newest_readable(best, lambda step: best.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta'], BEST_ITEMS)
  return meta['R1'] if meta else -1.0


def save_best(best: ocp.CheckpointManager, step: int, variables: dict, meta: dict):
  best.save(step, force=True, args=ocp.args.Composite(
      variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)))


@dataclasses.dataclass(frozen=True)
class EvaluationVariables:
  """Variables to evaluate, which checkpoint (or pre-trained file) they are, and its step.
  stand_in: the best checkpoint on val was chosen but none read back, so these are the last
  checkpoint's: their results must not take the place of the best's."""
  variables: dict
  which: str
  step: int | None = None
  stand_in: bool = False
  stage: int = 2  # of training: a stage-1 checkpoint's CA heads are untrained


def evaluation_variables(config: ml_collections.ConfigDict, checkpoints: ocp.CheckpointManager,
                         best: ocp.CheckpointManager,
                         abstract_state: Callable) -> EvaluationVariables:
  """config.eval.checkpoint's variables (best: the best on val when a val split picked one, else
  the latest checkpoint's; last; or a kept step), onto this run's devices, whatever device count
  saved them, and the words that say which they are."""
  choice = config.eval.checkpoint
  stage2 = abstract_state(2)
  had_best = choice == 'best' and bool(best.all_steps())
  try:
    if choice == 'best':
      found = newest_readable(best, lambda step: (step, best.restore(step, args=ocp.args.Composite(
          variables=ocp.args.StandardRestore({'params': stage2.params,
                                              'batch_stats': stage2.batch_stats}),
          meta=ocp.args.JsonRestore()))), BEST_ITEMS)
      if found:
        from dssl_jax import state as state_lib  # pylint: disable=g-import-not-at-top
        step, restored = found
        stage = state_lib.stage_of(restored['meta']['epoch'] - 1, config)  # saved 1-based
        return EvaluationVariables(restored['variables'],
                                   f'the best checkpoint on val (step {step})', step, stage=stage)
    if choice in ('best', 'last'):
      restored = latest_state(checkpoints, abstract_state)
    else:
      kept = checkpoints.all_steps()
      if not choice.isdigit() or int(choice) not in kept:
        raise UserError(f'config.eval.checkpoint={choice!r}: best, last or a step kept in '
                        f'{checkpoints.directory} ({", ".join(map(str, sorted(kept)))})')
      restored = read_state(checkpoints, int(choice), abstract_state)
  except (ValueError, KeyError) as e:  # orbax's words for a tree of other names or shapes
    raise UserError(f'the checkpoint in {os.path.dirname(checkpoints.directory)} does not fit the '
                    'configured model (config.model, dataset vocabulary or identities differ): '
                    f'{str(e).splitlines()[0][:300]}') from None
  if not restored:
    raise UserError(f'no readable checkpoint in {checkpoints.directory}: train first '
                    '(--mode=train with the same --workdir)')
  state, meta = restored
  which = (f'the last checkpoint (step {meta["step"]})' if choice in ('best', 'last')
           else f'checkpoint {meta["step"]}')
  return EvaluationVariables({'params': state.params, 'batch_stats': state.batch_stats}, which,
                             meta['step'], stand_in=had_best, stage=meta['stage'])


def newest_readable(checkpoints: ocp.CheckpointManager, read: Callable, items=STATE_ITEMS):
  """read(step) of the newest checkpoint that reads back; None when none does.

  A checkpoint that fails to read, and also fails to read without a target (so the failure is
  the files', not a model that differs), is moved aside into DIRECTORY.unreadable/STEP, never
  deleted, with one warning line: a truncated copy or a full disk must not stop every rerun.
  """
  log, found, moved = checkpoints.directory.parent / READ_LOG, None, []
  with stderr_into(log) as wait_until_quiet:
    for step in sorted(checkpoints.all_steps(), reverse=True):
      try:
        with orbax_quiet():
          found = read(step)
        break
      except Exception:  # pylint: disable=broad-except
        traceback.print_exc()  # into the log
        if _reads_without_target(checkpoints, step, items):
          raise  # the files are fine: the caller reports the mismatch
      aside = epath.Path(f'{checkpoints.directory}.unreadable') / str(step)
      for n in itertools.count(1):  # an earlier run's step of the same number may be there
        if not aside.exists():
          break
        aside = aside.with_name(f'{step}-{n}')
      if jax.process_index() == 0:
        aside.parent.mkdir(parents=True, exist_ok=True)
        (checkpoints.directory / str(step)).rename(aside)
        moved.append((step, aside))
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f'moved aside {checkpoints.directory}/{step}')
      with orbax_quiet():
        checkpoints.reload()
      wait_until_quiet()  # the failed read's threads print for a while after it raised
  for step, aside in moved:
    logging.warning('checkpoint %s is unreadable (truncated or corrupt files): moved to %s '
                    '(what the read raised: %s)', checkpoints.directory / str(step), aside, log)
  return found


def _reads_without_target(checkpoints, step, items) -> bool:
  """Whether every item of checkpoint `step` reads back as it was saved."""
  try:
    with orbax_quiet():
      checkpoints.restore(step, args=ocp.args.Composite(**{
          name: ocp.args.JsonRestore() if name == 'meta' else ocp.args.StandardRestore()
          for name in items}))
  except Exception:  # pylint: disable=broad-except
    return False
  return True


@contextlib.contextmanager
def stderr_into(log: epath.Path):
  """Appends to `log` whatever is written to this process's stderr during the block, from Python
  or C++, instead of the terminal: a corrupt checkpoint's read makes TensorStore's threads print
  thousands of lines through asyncio, and one warning line should stand for them. No file without
  output. Yields wait_until_quiet(): returns once nothing was printed for 0.2 s (at most 5 s)."""
  sys.stderr.flush()
  terminal = os.dup(2)
  with tempfile.TemporaryFile() as captured, open(captured.fileno(), 'w', buffering=1,
                                                  closefd=False) as python_stderr:
    def wait_until_quiet(interval: float = 0.2, limit: float = 5.0):
      size, deadline = -1, time.monotonic() + limit
      while size != os.fstat(captured.fileno()).st_size and time.monotonic() < deadline:
        size = os.fstat(captured.fileno()).st_size
        time.sleep(interval)

    os.dup2(captured.fileno(), 2)
    try:
      with contextlib.redirect_stderr(python_stderr):  # where sys.stderr is not fd 2
        yield wait_until_quiet
    finally:
      python_stderr.flush()
      sys.stderr.flush()
      os.dup2(terminal, 2)
      os.close(terminal)
      captured.seek(0)
      if text := captured.read():
        with open(log, 'ab') as f:
          f.write(f'--- {time.strftime("%Y-%m-%d %H:%M:%S")}, process '
                  f'{jax.process_index()}:\n'.encode() + text)


@contextlib.contextmanager
def orbax_quiet():
  """orbax logs its own errors (at absl's ERROR level) before raising: ours is the one line."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.FATAL)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


# ------------------------------------------------------------------------ workdir files

def save_workdir_files(workdir: str, config: ml_collections.ConfigDict,
                       meta: formats.DatasetMeta):
  """config.json and the vocabulary (process 0): what inference needs without the dataset."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(workdir, META_FILE), 'w') as f:
      json.dump({'vocabulary': meta.vocabulary, 'num_train_identities': meta.num_train_identities,
                 'tagger': meta.tagger}, f)


def _fill_missing(saved: dict, base: dict, prefix: str = '') -> list[str]:
  """Adds to `saved` (in place) the keys of `base` it lacks; returns their dotted names."""
  added = []
  for key, default in base.items():
    if key not in saved:
      saved[key] = default
      added.append(prefix + key)
    elif isinstance(default, dict) and isinstance(saved[key], dict):
      added += _fill_missing(saved[key], default, f'{prefix}{key}.')
  return added


def _saved_config(path: str) -> tuple[dict, list[str]]:
  """config.json as a dict, each option it predates at its default (dssl_jax/defaults.py); and
  those options' names."""
  with open(path) as f:
    saved = json.load(f)
  return saved, _fill_missing(saved, defaults.get_config().to_dict())


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict):
  """Refuses, in one line, a config that would change WORKDIR's run (RUN_FIELDS) before anything
  is written there; NOTED_FIELDS' changes are said in one line; the rest (eval.*, cadence,
  profiling) may change freely. A workdir without config.json has no run yet."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return
  flat = lambda tree: flax.traverse_util.flatten_dict(tree, sep='.')
  saved = flat(_saved_config(path)[0])
  new = flat(json.loads(config.to_json_best_effort()))
  changed = sorted(k for k in saved.keys() | new.keys() if saved.get(k) != new.get(k))
  refused = [k for k in changed if k not in NOT_RUN_FIELDS + NOTED_FIELDS
             and any(k == f or k.startswith(f + '.') for f in RUN_FIELDS)]
  if refused:
    shown = ', '.join(f'{k} ({saved.get(k)!r} -> {new.get(k)!r})' for k in refused)
    raise UserError(f'{workdir} holds a run with other settings: {shown}; its checkpoints would '
                    'not fit. Use a new --workdir, or the settings saved in its config.json')
  noted = [k for k in changed if k in NOTED_FIELDS]
  if noted:
    logging.warning('%s: %s', workdir, ', '.join(f'{k} changed from {saved[k]!r} to {new[k]!r}'
                                                 for k in noted))


def load_workdir(workdir: str) -> tuple[ml_collections.ConfigDict, formats.DatasetMeta]:
  """The config and the vocabulary a run was trained with, from its workdir alone. An option the
  saved config predates takes its default (dssl_jax/defaults.py), with one warning."""
  paths = [os.path.join(workdir, name) for name in ('config.json', META_FILE)]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise UserError(f'{missing[0]} not found: --workdir must be a trained dssl_jax workdir')
  saved, added = _saved_config(paths[0])
  if added:
    logging.warning(f'{paths[0]} predates {", ".join(added)}: using the defaults of '
                    'dssl_jax/defaults.py')
  saved['data']['image_size'] = tuple(saved['data']['image_size'])  # json made it a list
  with open(paths[1]) as f:
    meta = json.load(f)
  return ml_collections.ConfigDict(saved), formats.DatasetMeta(
      meta['vocabulary'], meta['num_train_identities'], {}, (), meta.get('tagger', ''))
