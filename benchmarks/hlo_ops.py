"""Executed ops of a compiled XLA program, read from its optimized HLO text: a backend-independent
proxy for the kernels an accelerator launches per step (issue 38's counting rule).

Every instruction counts once, except those that launch nothing (EXCLUDED). A fusion is one
instruction; its body is not counted. A while loop counts its body (known trip count) times; a
call counts its callee's instructions; a conditional its largest branch. Loop iterations are the
trip counts of every while loop, nested ones times their outer loop's.
"""
import re

EXCLUDED = frozenset(['parameter', 'constant', 'tuple', 'get-tuple-element', 'bitcast',
                      'after-all'])
_HEADER = re.compile(r'^(?:ENTRY\s+)?%(\S+)\s.*\{\s*$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%\S+\s*=\s*(.*)$')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def _opcode_and_rest(text: str) -> tuple[str, str]:
  """'f32[4]{0} add(%a, %b), ...' or '(s32[], f32[4]) while(...)' -> ('add', '(%a, %b), ...')."""
  if text.startswith('('):  # a tuple shape: skip to its closing parenthesis
    depth = 0
    for i, char in enumerate(text):
      depth += {'(': 1, ')': -1}.get(char, 0)
      if depth == 0:
        text = text[i + 1:]
        break
  else:
    text = text.split(' ', 1)[1]
  opcode, rest = text.strip().split('(', 1)
  return opcode.strip(), rest


def parse(hlo_text: str) -> tuple[dict[str, list[tuple[str, str]]], str]:
  """({computation: [(opcode, operands and attributes)]}, the entry computation's name)."""
  computations, entry, current = {}, None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith(' '):
      current = computations.setdefault(header.group(1), [])
      if line.startswith('ENTRY'):
        entry = header.group(1)
    elif line.startswith('}'):
      current = None
    elif current is not None and (instruction := _INSTRUCTION.match(line)):
      current.append(_opcode_and_rest(instruction.group(1)))
  if entry is None:
    raise ValueError('no ENTRY computation in the HLO text')
  return computations, entry


def _callees(rest: str, attribute: str) -> list[str]:
  found = re.search(attribute + r'=\{?([^}\s,]+(?:,\s*%[^}\s,]+)*)\}?', rest)
  return [name.strip().lstrip('%') for name in found.group(1).split(',')] if found else []


def count(hlo_text: str) -> dict:
  """{'ops': executed ops, 'loop_iterations': sequential loop iterations} of one execution."""
  computations, entry = parse(hlo_text)

  def walk(name: str) -> tuple[int, int]:
    ops = iterations = 0
    for opcode, rest in computations[name]:
      if opcode in EXCLUDED:
        continue
      if opcode == 'while':
        trips = _TRIP_COUNT.search(rest)
        if not trips:
          raise ValueError(f'a while loop in {name} has no known trip count')
        body_ops, body_iterations = walk(_callees(rest, 'body')[0])
        n = int(trips.group(1))
        ops, iterations = ops + n * body_ops, iterations + n * (1 + body_iterations)
      elif opcode == 'call':
        callee_ops, callee_iterations = walk(_callees(rest, 'to_apply')[0])
        ops, iterations = ops + callee_ops, iterations + callee_iterations
      elif opcode == 'conditional':
        branches = (_callees(rest, 'branch_computations')
                    or _callees(rest, 'true_computation') + _callees(rest, 'false_computation'))
        branch_ops, branch_iterations = max(walk(branch) for branch in branches)
        ops, iterations = ops + 1 + branch_ops, iterations + branch_iterations
      else:
        ops += 1
    return ops, iterations

  ops, iterations = walk(entry)
  return {'ops': ops, 'loop_iterations': iterations}
