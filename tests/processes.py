"""N processes of one command on localhost, wired as N hosts (what launch/local.sh does)."""
import os
import random
import subprocess


def spawn(command: list, n: int, cwd: str, env: dict | None = None, timeout: float = 900
          ) -> list[subprocess.CompletedProcess]:
  """Runs `command` n times at once; with n > 1, SLURM's variables for jax.distributed (a random
  job id picks the coordinator's port, so that concurrent tests do not meet)."""
  job = str(random.randrange(4096))
  children = []
  for i in range(n):
    slurm = {'SLURM_JOB_ID': job, 'SLURM_STEP_NODELIST': 'localhost', 'SLURM_NTASKS': str(n),
             'SLURM_PROCID': str(i), 'SLURM_LOCALID': str(i)} if n > 1 else {}
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
