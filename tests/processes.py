"""N processes of one command on localhost, wired as N hosts (what launch/local.sh does)."""
import os
import random
import re
import subprocess


# Processes wired as hosts compile without the tests' persistent XLA cache (conftest.py): with it
# warm, their first collective failed over gloo here (jaxlib 0.10.2: "Gloo AllGather failed ...
# Connection reset by peer"); cold, and without it, they pass.
WITHOUT_COMPILATION_CACHE = {'JAX_COMPILATION_CACHE_DIR': ''}


def spawn(command: list, n: int, cwd: str, env: dict | None = None, timeout: float = 900
          ) -> list[subprocess.CompletedProcess]:
  """Runs `command` n times at once; with n > 1, SLURM's variables for jax.distributed (a random
  job id picks the coordinator's port, so that concurrent tests do not meet), without the
  compilation cache."""
  job = str(random.randrange(4096))
  children = []
  for i in range(n):
    slurm = {'SLURM_JOB_ID': job, 'SLURM_STEP_NODELIST': 'localhost', 'SLURM_NTASKS': str(n),
             'SLURM_PROCID': str(i), 'SLURM_LOCALID': str(i),
             **WITHOUT_COMPILATION_CACHE} if n > 1 else {}
    children.append(subprocess.Popen(command, cwd=cwd, env=os.environ | (env or {}) | slurm,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  done = []
  for child in children:
    try:
      out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for c in children:
        c.kill()
      raise
    done.append(subprocess.CompletedProcess(command, child.returncode, out, err))
  return done


def why_it_failed(stderr: str, chars: int = 4000) -> str:
  """What a failed child said: its first error (a traceback, or an absl E/F line: with several
  processes the first is usually the cause) and its last lines, without what buries them (the list
  of extension modules Python prints when a process aborts, progress bars)."""
  text = '\n'.join(line for line in stderr.splitlines()
                   if not line.startswith('Extension modules:') and '\x1b[A' not in line
                   and ' examples/s]' not in line)
  first = re.search(r'^(Traceback|[EF]\d{4} )', text, re.MULTILINE)
  if len(text) <= chars or not first:
    return text[-chars:]
  return f'{text[first.start():][:chars // 2]}\n[...]\n{text[-chars // 2:]}'
