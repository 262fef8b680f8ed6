"""A synthetic text-person dataset in the CUHK-PEDES layout: the embedded default.

Each identity is a combination of person attributes (sex cues, skin, hair, upper and lower clothing
type and colour, pattern, shoes, bag, hat); each of its images puts that person, in a varied pose, on
different surroundings (scene, clutter in the same colours as clothing, other passers-by, lighting,
position, scale, mirror flip). Captions describe the person only, in varied wording with filler
words, and may leave an attribute out. Surroundings share the clothing palette, so colour
histograms alone do not retrieve the person.

  python -m dssl_jax.data.synthetic --out DIR --identities N --seed S

writes DIR/reid_raw.json and DIR/imgs/synthetic/*.jpg; the same seed gives the same bytes.
"""
import dataclasses
import functools
import json
import multiprocessing
import os
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image, ImageDraw, ImageFilter
import tqdm

from dssl_jax.data import captions as captions_lib

ANNOTATION_FILE = 'reid_raw.json'
IMAGE_SIZE = (288, 96)  # height, width: the 3:1 aspect of 384x128
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # of the identities: train, val, test
_SUPERSAMPLE = 2  # draw at 2x, then downsample, for smooth edges

COLOURS = {
    'black': (25, 25, 28), 'white': (235, 235, 232), 'gray': (128, 128, 130),
    'red': (200, 30, 35), 'blue': (35, 75, 200), 'green': (40, 150, 60),
    'yellow': (235, 205, 40), 'orange': (240, 130, 30), 'purple': (120, 50, 160),
    'pink': (240, 140, 180), 'brown': (120, 75, 40), 'navy': (25, 35, 90),
}
COLOUR_WORDS = {'gray': ['gray', 'grey'], 'navy': ['navy', 'dark blue']}
SKIN = [(241, 204, 178), (224, 172, 140), (190, 135, 100), (140, 95, 65), (95, 65, 45)]
HAIR = {'black': (20, 18, 18), 'brown': (95, 60, 35), 'blonde': (225, 190, 110),
        'gray': (160, 160, 160), 'red': (160, 60, 30)}

UPPER = {  # type -> (sleeve: short|long, hem: waist|thigh, words)
    't-shirt': ('short', 'waist', ['t-shirt', 'tee']),
    'shirt': ('long', 'waist', ['shirt', 'long sleeved shirt', 'button up shirt']),
    'jacket': ('long', 'waist', ['jacket', 'zip up jacket']),
    'coat': ('long', 'thigh', ['coat', 'long coat']),
    'sweater': ('long', 'waist', ['sweater', 'jumper']),
    'hoodie': ('long', 'waist', ['hoodie', 'hooded sweatshirt']),
    'vest': ('none', 'waist', ['sleeveless top', 'vest']),
}
LOWER = {  # type -> (length: knee|ankle, words)
    'trousers': ('ankle', ['pants', 'trousers']),
    'jeans': ('ankle', ['jeans', 'denim pants']),
    'shorts': ('knee', ['shorts']),
    'skirt': ('knee', ['skirt']),
}
BAGS = {'backpack': ['backpack'], 'handbag': ['handbag', 'purse'],
        'shoulder bag': ['shoulder bag', 'bag over the shoulder']}
HATS = {'cap': ['cap', 'baseball cap'], 'hat': ['hat']}
SHOE_WORDS = ['shoes', 'sneakers', 'boots']
FILLERS = ['probably', 'kind of', 'i think', 'maybe', 'also', 'um', 'it seems', 'quite',
           'actually', 'you can see', 'clearly', 'basically']


@dataclasses.dataclass(frozen=True)
class Person:
  """The attributes that define one identity."""
  sex: str
  skin: int
  hair_colour: str
  hair_length: str  # short | long | bald
  upper: str
  upper_colour: str
  striped: str  # '' or the stripe colour
  lower: str
  lower_colour: str
  shoes_colour: str
  bag: str  # '' or a key of BAGS
  bag_colour: str
  hat: str  # '' or a key of HATS
  hat_colour: str
  build: float  # shoulder width factor


def _pick(rng: np.random.Generator, options: Sequence, p=None):
  return options[rng.choice(len(options), p=p)]


def sample_person(rng: np.random.Generator) -> Person:
  colours = list(COLOURS)
  sex = _pick(rng, ['man', 'woman'])
  hair_length = _pick(rng, ['short', 'long', 'bald'],
                      p=[0.8, 0.1, 0.1] if sex == 'man' else [0.25, 0.75, 0.0])
  lower = _pick(rng, list(LOWER), p=[0.4, 0.35, 0.25, 0.0] if sex == 'man' else [0.25, 0.3, 0.15,
                                                                                 0.3])
  upper_colour = _pick(rng, colours)
  bag, hat = _pick(rng, ['', *BAGS], p=[0.4, 0.25, 0.2, 0.15]), _pick(rng, ['', *HATS],
                                                                       p=[0.7, 0.2, 0.1])
  striped = _pick(rng, [c for c in colours if c != upper_colour]) if rng.random() < 0.2 else ''
  return Person(
      sex=sex, skin=int(rng.integers(len(SKIN))), hair_colour=_pick(rng, list(HAIR)),
      hair_length=hair_length, upper=_pick(rng, list(UPPER)), upper_colour=upper_colour,
      striped=striped, lower=lower, lower_colour=_pick(rng, colours),
      shoes_colour=_pick(rng, ['black', 'white', 'brown', 'red', 'blue', 'gray']), bag=bag,
      bag_colour=_pick(rng, colours), hat=hat, hat_colour=_pick(rng, colours),
      build=float(rng.uniform(0.9, 1.1)) * (1.08 if sex == 'man' else 0.94))


def sample_identities(n: int, rng: np.random.Generator) -> list[Person]:
  """n people with pairwise different attributes (ignoring build)."""
  people, seen = [], set()
  while len(people) < n:
    person = sample_person(rng)
    key = dataclasses.replace(person, build=0.0)
    if key not in seen:
      seen.add(key)
      people.append(person)
  return people


# ----------------------------------------------------------------------------- drawing


def _jitter(rgb, rng, amount=18):
  return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _draw_background(draw: ImageDraw.ImageDraw, size, rng: np.random.Generator):
  """One of four scene types, drawn with palette colours so they compete with clothing."""
  h, w = size
  palette = list(COLOURS.values())
  scene = _pick(rng, ['street', 'park', 'indoor', 'parking'])
  horizon = int(h * rng.uniform(0.35, 0.6))
  if scene == 'street':
    draw.rectangle([0, 0, w, horizon], fill=_jitter((150, 180, 215), rng, 30))
    x = -int(rng.integers(0, w // 3))
    while x < w:
      bw = int(rng.integers(w // 3, w))
      top = int(rng.integers(0, horizon // 2))
      facade = _jitter(_pick(rng, palette + [(180, 170, 150), (140, 120, 110)]), rng)
      draw.rectangle([x, top, x + bw, horizon], fill=facade)
      for wy in range(top + 8, horizon - 8, 22):
        for wx in range(x + 6, x + bw - 10, 18):
          draw.rectangle([wx, wy, wx + 9, wy + 12], fill=_jitter((70, 90, 110), rng, 40))
      x += bw
    draw.rectangle([0, horizon, w, h], fill=_jitter((155, 150, 145), rng, 25))
  elif scene == 'park':
    draw.rectangle([0, 0, w, horizon], fill=_jitter((160, 195, 230), rng, 30))
    draw.rectangle([0, horizon, w, h], fill=_jitter((70, 140, 60), rng, 30))
    for _ in range(int(rng.integers(1, 4))):
      cx, r = int(rng.integers(0, w)), int(rng.integers(w // 5, w // 2))
      draw.rectangle([cx - 4, horizon - r, cx + 4, horizon + 10], fill=(90, 60, 35))
      draw.ellipse([cx - r, horizon - 2 * r, cx + r, horizon - r // 3],
                   fill=_jitter((50, 120, 45), rng, 35))
  elif scene == 'indoor':
    draw.rectangle([0, 0, w, horizon], fill=_jitter(_pick(rng, palette + [(220, 215, 200)]), rng))
    draw.rectangle([0, horizon, w, h], fill=_jitter((170, 150, 120), rng, 40))
    for _ in range(int(rng.integers(1, 4))):  # posters and doors
      x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, horizon // 2))
      draw.rectangle([x0, y0, x0 + int(rng.integers(12, w // 2)), y0 + int(rng.integers(15, 60))],
                     fill=_jitter(_pick(rng, palette), rng))
  else:
    draw.rectangle([0, 0, w, horizon], fill=_jitter((175, 185, 195), rng, 30))
    draw.rectangle([0, horizon, w, h], fill=_jitter((90, 90, 95), rng, 20))
    for _ in range(int(rng.integers(1, 3))):  # cars
      cx, cy = int(rng.integers(-w // 4, w)), int(horizon + rng.integers(-10, h // 4))
      cw, ch = int(rng.integers(w // 2, w)), int(rng.integers(h // 10, h // 6))
      draw.rounded_rectangle([cx, cy - ch, cx + cw, cy], radius=8,
                             fill=_jitter(_pick(rng, palette), rng))
  for _ in range(int(rng.integers(2, 7))):  # clutter in the clothing palette
    x0, y0 = int(rng.integers(-10, w)), int(rng.integers(0, h))
    x1, y1 = x0 + int(rng.integers(6, w // 2)), y0 + int(rng.integers(6, h // 5))
    shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
    shape([x0, y0, x1, y1], fill=_jitter(_pick(rng, palette), rng))


def _draw_person(draw: ImageDraw.ImageDraw, person: Person, x0: float, y0: float, height: float,
                 rng: np.random.Generator, back_view: bool = False, jitter: bool = True):
  """Draws `person` standing with feet at y0 + height, centred at x0 (facing the camera)."""
  u = height / 100.0  # body units: the person is 100 units tall
  def col(name, table=COLOURS):
    return _jitter(table[name], rng, 12) if jitter else table[name]
  def box(x_a, y_a, x_b, y_b, fill, shape='rect'):
    coords = [x0 + x_a * u, y0 + y_a * u, x0 + x_b * u, y0 + y_b * u]
    coords = [min(coords[0], coords[2]), min(coords[1], coords[3]),
              max(coords[0], coords[2]), max(coords[1], coords[3])]
    (draw.ellipse if shape == 'ellipse' else draw.rectangle)(coords, fill=fill)
  def poly(points, fill):
    draw.polygon([(x0 + px * u, y0 + py * u) for px, py in points], fill=fill)

  skin = _jitter(SKIN[person.skin], rng, 8)
  hair = col(person.hair_colour, HAIR)
  upper, lower = col(person.upper_colour), col(person.lower_colour)
  shoulder = 11 * person.build
  hip = 8.5 if person.sex == 'man' else 10.0
  stride = float(rng.uniform(-5, 5))
  arm_swing = float(rng.uniform(-4, 4))
  sleeve, hem, _ = UPPER[person.upper]
  waist, torso_bottom = 52, 70 if hem == 'thigh' else 52
  length, _ = LOWER[person.lower]

  if person.bag == 'backpack':
    box(-shoulder - 2, 22, shoulder + 2, 50, col(person.bag_colour))
  if person.hair_length == 'long':
    box(-8, 6, 8, 34, hair)
  if person.upper == 'hoodie':
    box(-9, 12, 9, 24, upper, 'ellipse')

  # Legs: skin, then the lower garment, then shoes.
  for side in (-1, 1):
    lx = side * 4.5 + side * stride * 0.5
    poly([(side * 1 - 3, waist), (side * 1 + 3 * side + 3, waist), (lx + 3, 95), (lx - 3, 95)],
         skin)
    end = 95 if length == 'ankle' else 75
    if person.lower != 'skirt':
      poly([(side * 0.5 - 3.5 + side * 0.5, waist), (side * hip, waist),
            (lx + 3.5, end), (lx - 3.5, end)], lower)
    box(lx - 4, 94, lx + 4, 99.5, col(person.shoes_colour), 'ellipse')
  if person.lower == 'skirt':
    poly([(-hip + 1, waist), (hip - 1, waist), (hip + 4, 75), (-hip - 4, 75)], lower)
  elif person.upper != 'coat':
    box(-hip, waist - 1, hip, waist + 5, lower)

  # Torso and arms.
  poly([(-shoulder, 21), (shoulder, 21), (hip + 1, torso_bottom), (-hip - 1, torso_bottom)], upper)
  if person.striped:
    stripe = col(person.striped)
    for y in np.arange(25, torso_bottom - 2, 5.5):
      box(-shoulder + 2 * (y - 21) / 40, y, shoulder - 2 * (y - 21) / 40, y + 2, stripe)
  for side in (-1, 1):
    ax = side * (shoulder + 2.5)
    hand_x = ax + side * 1.5 + side * arm_swing * 0.3
    poly([(ax - 2.5, 22), (ax + 2.5, 22), (hand_x + 2.3, 56), (hand_x - 2.3, 56)], skin)
    if sleeve != 'none':
      sleeve_end = 33 if sleeve == 'short' else 55
      t = (sleeve_end - 22) / 34
      sx = ax + (hand_x - ax) * t
      poly([(ax - 3, 21), (ax + 3, 21), (sx + 2.8, sleeve_end), (sx - 2.8, sleeve_end)], upper)
    box(hand_x - 2.5, 55, hand_x + 2.5, 60, skin, 'ellipse')
  if person.bag == 'handbag':
    hx = shoulder + 4
    box(hx - 1, 56, hx + 9, 66, col(person.bag_colour))
  elif person.bag == 'shoulder bag':
    bag = col(person.bag_colour)
    draw.line([x0 - shoulder * 0.6 * u, y0 + 21 * u, x0 + hip * u, y0 + 48 * u], fill=bag,
              width=max(1, int(1.8 * u)))
    box(hip - 2, 45, hip + 8, 56, bag)

  # Head, hair, hat.
  box(-2.5, 16, 2.5, 22, skin)
  box(-6.5, 3, 6.5, 18, hair if back_view and person.hair_length != 'bald' else skin, 'ellipse')
  if person.hair_length != 'bald' and not back_view:
    box(-6.8, 2.5, 6.8, 8.5, hair, 'ellipse')
  if person.hat == 'cap':
    hat = col(person.hat_colour)
    box(-7, 1.5, 7, 8, hat, 'ellipse')
    box(-1, 6, 10, 8, hat)
  elif person.hat == 'hat':
    hat = col(person.hat_colour)
    box(-11, 5.5, 11, 8.5, hat, 'ellipse')
    box(-6, -1, 6, 7, hat)


def render_image(person: Person, rng: np.random.Generator,
                 size: tuple[int, int] = IMAGE_SIZE) -> Image.Image:
  """One photo of `person`: new scene, passers-by, pose, position, scale, light, flip, noise."""
  h, w = size[0] * _SUPERSAMPLE, size[1] * _SUPERSAMPLE
  canvas = Image.new('RGB', (w, h))
  draw = ImageDraw.Draw(canvas)
  _draw_background(draw, (h, w), rng)
  for _ in range(int(rng.integers(0, 3))):  # passers-by behind, partly visible
    other = sample_person(rng)
    oh = h * rng.uniform(0.5, 0.8)
    _draw_person(draw, other, rng.uniform(-0.2, 1.2) * w, h * rng.uniform(0.05, 0.3), oh, rng)
  height = h * rng.uniform(0.78, 0.95)
  _draw_person(draw, person, w / 2 + rng.uniform(-0.12, 0.12) * w,
               h - height - h * rng.uniform(0.0, 0.04), height, rng,
               back_view=bool(rng.random() < 0.25))
  if rng.random() < 0.5:
    canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.6)))
  canvas = canvas.resize((size[1], size[0]), Image.Resampling.BILINEAR)
  pixels = np.asarray(canvas, np.float32)
  gain = rng.uniform(0.6, 1.3) * rng.uniform(0.85, 1.15, size=3)  # brightness and colour cast
  shade = np.linspace(rng.uniform(0.75, 1.1), rng.uniform(0.75, 1.1), size[0])[:, None, None]
  pixels = pixels * gain * shade + rng.normal(0, rng.uniform(2, 8), pixels.shape)
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- captions


def _colour_word(name: str, rng) -> str:
  return _pick(rng, COLOUR_WORDS.get(name, [name]))


def describe(person: Person, rng: np.random.Generator) -> str:
  """A caption of the person only, in varied wording; may leave an accessory or detail out."""
  he = 'he' if person.sex == 'man' else 'she'
  his = 'his' if person.sex == 'man' else 'her'
  subject = _pick(rng, {'man': ['a man', 'the man', 'a young man', 'this guy', 'a male'],
                        'woman': ['a woman', 'the woman', 'a young woman', 'this lady',
                                  'a female', 'the girl']}[person.sex])
  hair_colour = person.hair_colour
  if person.hair_length == 'bald':
    hair = _pick(rng, ['with a bald head', 'who is bald'])
  else:
    hair = _pick(rng, [f'with {person.hair_length} {hair_colour} hair',
                       f'who has {person.hair_length} {hair_colour} hair',
                       f'with {hair_colour} hair that is {person.hair_length}'])
  upper_words = _pick(rng, UPPER[person.upper][2])
  pattern = f'{_colour_word(person.striped, rng)} striped ' if person.striped else ''
  upper = f'{_colour_word(person.upper_colour, rng)} {pattern}{upper_words}'
  lower = f'{_colour_word(person.lower_colour, rng)} {_pick(rng, LOWER[person.lower][1])}'
  shoes = f'{_colour_word(person.shoes_colour, rng)} {_pick(rng, SHOE_WORDS)}'
  wear = _pick(rng, ['wearing', 'dressed in', 'in', 'clothed in'])
  a = lambda phrase: ('an ' if phrase[0] in 'aeiou' else 'a ') + phrase
  clauses = [f'{subject} {hair} is {wear} {a(upper)}']
  lower_clause = _pick(rng, [f'{he} has on {lower}', f'{lower} on the bottom',
                             f'{his} bottoms are {lower}', f'{he} is wearing {lower}'])
  extras = [lower_clause, _pick(rng, [f'{shoes} on {his} feet', f'{he} wears {shoes}',
                                      f'a pair of {shoes}'])]
  if person.bag:
    bag = f'{_colour_word(person.bag_colour, rng)} {_pick(rng, BAGS[person.bag])}'
    extras.append(_pick(rng, [f'{he} is carrying {a(bag)}', f'{he} has {a(bag)}',
                              f'carrying {a(bag)}']))
  if person.hat:
    hat = f'{_colour_word(person.hat_colour, rng)} {_pick(rng, HATS[person.hat])}'
    extras.append(_pick(rng, [f'{he} wears {a(hat)}', f'{a(hat)} on {his} head']))
  keep = [e for i, e in enumerate(extras) if i == 0 or rng.random() > 0.2]  # sometimes omitted
  order = rng.permutation(len(keep))
  clauses += [keep[i] for i in order]
  words = []
  for i, clause in enumerate(clauses):
    clause_words = clause.split()
    if rng.random() < 0.35:  # a noise word somewhere in the clause
      pos = int(rng.integers(1, len(clause_words) + 1))
      clause_words[pos:pos] = _pick(rng, FILLERS).split()
    sep = ',' if (i < len(clauses) - 1 and rng.random() < 0.5) else '.'
    words.append(' '.join(clause_words) + sep)
  text = ' '.join(words)
  sentences = [s.strip() for s in text.split('.') if s.strip()]
  return ' '.join(s[0].upper() + s[1:] + '.' for s in sentences)


# ----------------------------------------------------------------------------- the dataset


def split_counts(identities: int, split_fractions) -> tuple[int, int, int]:
  """Identities of train, val and test (test takes the rest; each split keeps at least one)."""
  n_train = max(1, int(round(split_fractions[0] * identities)))
  n_val = max(1, int(round(split_fractions[1] * identities)))
  return n_train, n_val, identities - n_train - n_val


def _render_identity(job) -> list[dict]:
  """Every image of one identity, written to disk, and its annotation entries (a worker's job)."""
  out_dir, seed, index, person, split, images_per_identity, captions_per_image, size = job
  entries = []
  for shot in range(images_per_identity):
    image_rng = np.random.default_rng([seed, index, shot])
    file_path = f'synthetic/p{index + 1:05d}_{shot}.jpg'
    render_image(person, image_rng, size).save(os.path.join(out_dir, 'imgs', file_path),
                                               quality=92)
    texts = [describe(person, image_rng) for _ in range(captions_per_image)]
    entries.append({'split': split, 'captions': texts, 'file_path': file_path,
                    'processed_tokens': [captions_lib.tokenize(t) for t in texts],
                    'id': index + 1})
  return entries


def generate(out_dir: str, identities: int, seed: int = 0, images_per_identity: int = 4,
             captions_per_image: int = 2, split_fractions=SPLIT_FRACTIONS,
             size: tuple[int, int] = IMAGE_SIZE, processes: int | None = None) -> dict:
  """Writes the dataset; returns {split: (identities, images, captions)}. Deterministic in seed
  (each image draws from its own generator), so `processes` workers (default: every core) write
  the same bytes as one."""
  if identities < 3:
    raise ValueError(f'--identities must be at least 3 (one per split), got {identities}')
  rng = np.random.default_rng(seed)
  people = sample_identities(identities, rng)
  order = rng.permutation(identities)
  n_train, n_val, _ = split_counts(identities, split_fractions)
  split_of = {int(p): ('train' if r < n_train else 'val' if r < n_train + n_val else 'test')
              for r, p in enumerate(order)}
  os.makedirs(os.path.join(out_dir, 'imgs', 'synthetic'), exist_ok=True)
  jobs = [(out_dir, seed, index, person, split_of[index], images_per_identity,
           captions_per_image, tuple(size)) for index, person in enumerate(people)]
  processes = min(processes or os.cpu_count() or 1, identities)
  progress = functools.partial(tqdm.tqdm, desc='generating people', total=identities,
                               unit='person', disable=None, leave=False)
  if processes > 1:  # spawn, not fork: the caller may hold JAX's threads
    with multiprocessing.get_context('spawn').Pool(processes) as pool:
      per_identity = list(progress(pool.imap(_render_identity, jobs,
                                             chunksize=max(1, identities // (8 * processes)))))
  else:
    per_identity = list(progress(map(_render_identity, jobs)))
  entries = [entry for identity in per_identity for entry in identity]
  counts = {}
  for e in entries:
    ids, images, caps = counts.get(e['split'], (set(), 0, 0))
    counts[e['split']] = (ids | {e['id']}, images + 1, caps + len(e['captions']))
  tmp = os.path.join(out_dir, ANNOTATION_FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(entries, f)
  os.replace(tmp, os.path.join(out_dir, ANNOTATION_FILE))  # the json marks a complete set
  return {split: (len(ids), images, caps) for split, (ids, images, caps) in counts.items()}


def main(argv):
  del argv
  start = time.time()
  counts = generate(flags.FLAGS.out, flags.FLAGS.identities, flags.FLAGS.seed,
                    flags.FLAGS.images_per_identity)
  for split, (ids, images, caps) in sorted(counts.items()):
    logging.info('%s: %d identities, %d images, %d captions', split, ids, images, caps)
  print(f'wrote {flags.FLAGS.out}/{ANNOTATION_FILE} in {time.time() - start:.1f}s')


if __name__ == '__main__':
  flags.DEFINE_string('out', None, 'Output folder (CUHK-PEDES layout).', required=True)
  flags.DEFINE_integer('identities', 500, 'Number of people.')
  flags.DEFINE_integer('seed', 0, 'Random seed: the same seed gives the same dataset.')
  flags.DEFINE_integer('images_per_identity', 4, 'Images of each person.')
  app.run(main)
