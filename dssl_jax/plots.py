"""A run's pictures: loss curves, retrieval results (the paper's Figure 5), ablation bar charts."""
import json
import os

from dssl_jax.reports import METRICS, SEPARATION


def loss_curves(metrics_path: str, out_path: str):
  """Total and per-term training losses against step, val R1 on a second axis."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if not os.path.exists(metrics_path):
    return
  with open(metrics_path) as f:
    records = [json.loads(line) for line in f]
  train = [r for r in records if 'train/loss' in r]
  val = [r for r in records if 'val/R1' in r]
  separation = sorted({k for r in train for k in r if k.startswith('train/' + SEPARATION)})
  fig, axes = plt.subplots(1, 3 if separation else 2, figsize=(19 if separation else 13, 4.5))
  ax_total, ax_terms = axes[:2]
  ax_total.plot([r['step'] for r in train], [r['train/loss'] for r in train], label='total loss')
  ax_total.set_xlabel('step')
  ax_total.set_yscale('log')
  if val:
    ax_val = ax_total.twinx()
    ax_val.plot([r['step'] for r in val], [r['val/R1'] for r in val], 'o-', color='tab:red',
                label='val R1 (%)')
    ax_val.set_ylabel('val R1 (%)')
    ax_val.legend(loc='lower right')
  ax_total.legend(loc='lower left')
  stage2 = [r['step'] for r in train if any(k.startswith('train/align') for k in r)]
  if stage2:
    ax_total.axvline(stage2[0], color='gray', linestyle=':', label='stage 2')
  names = sorted({k for r in train for k in r if k.startswith('train/') and k not in (
      'train/loss', 'train/lr') and k not in separation})
  ax_terms.set_prop_cycle(color=plt.get_cmap('tab20').colors)
  for name in names:
    points = [(r['step'], r[name]) for r in train if name in r]
    ax_terms.plot(*zip(*points), label=name[len('train/'):])
  ax_terms.set_yscale('log')
  ax_terms.set_xlabel('step')
  ax_terms.legend(fontsize=7, ncol=2)
  ax_terms.set_title('loss terms')
  if separation:  # norms on the left axis, |cos(V_P, V_S)| on the right
    ax_norms = axes[2]
    ax_cos = ax_norms.twinx()
    for name in separation:
      points = [(r['step'], r[name]) for r in train if name in r]
      short = name[len('train/' + SEPARATION):]
      (ax_cos if short.startswith('abs_cos') else ax_norms).plot(
          *zip(*points), ':' if short.startswith('abs_cos') else '-', label=short)
    ax_norms.set_xlabel('step')
    ax_norms.set_ylabel('mean norm')
    ax_cos.set_ylabel('mean |cos(V_P, V_S)|')
    ax_norms.legend(loc='upper left', fontsize=7)
    ax_cos.legend(loc='upper right', fontsize=7)
    ax_norms.set_title('separation')
  fig.tight_layout()
  fig.savefig(out_path, dpi=90)
  plt.close(fig)


def contact_sheet(out_path: str, texts, path_lists, image_root: str, matches=None,
                  thumb=(144, 48)):
  """One row per text: the sentence, then its images left to right; with `matches`, each image
  is framed green (a true match) or red."""
  import textwrap  # pylint: disable=g-import-not-at-top
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  height, width = thumb
  text_width, pad = 260, 6
  columns = max((len(paths) for paths in path_lists), default=1)
  row_height = height + 2 * pad
  sheet = Image.new('RGB', (text_width + columns * (width + pad) + pad,
                            row_height * max(len(texts), 1)), 'white')
  draw = ImageDraw.Draw(sheet)
  for row, (text, paths) in enumerate(zip(texts, path_lists)):
    y = row * row_height + pad
    text = text.decode() if isinstance(text, bytes) else text
    draw.multiline_text((pad, y), '\n'.join(textwrap.wrap(text, 44)[:12]), fill='black')
    for k, path in enumerate(paths):
      x = text_width + k * (width + pad)
      path = path.decode() if isinstance(path, bytes) else path
      try:
        with Image.open(os.path.join(image_root, path)) as image:
          sheet.paste(image.convert('RGB').resize((width, height)), (x, y))
      except OSError:
        draw.text((x + 4, y + height // 2), 'missing', fill='gray')
      if matches is not None:
        colour = 'green' if matches[row][k] else 'red'
        draw.rectangle([x - 2, y - 2, x + width + 1, y + height + 1], outline=colour, width=3)
  sheet.save(out_path)


def retrieval_picture(out_path: str, similarity, query_texts, query_ids, gallery_paths,
                      gallery_ids, image_root: str, queries=(0, 1, 2, 3), top_k: int = 5):
  """Like the paper's Figure 5: a few queries and their top-k gallery images, true matches green."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  queries = [q for q in queries if q < len(query_texts)]
  tops = [np.argsort(-similarity[q], kind='stable')[:top_k] for q in queries]
  contact_sheet(out_path, [query_texts[q] for q in queries],
                [[gallery_paths[g] for g in top] for top in tops], image_root,
                [[gallery_ids[g] == query_ids[q] for g in top] for q, top in zip(queries, tops)])


def bar_chart(rows: dict, out_path: str, title: str = ''):
  """Grouped bars of R1/R5/R10/mAP/mINP per row (an ablation table as a picture); (mean, std)
  cells get error bars."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  names = list(rows)
  fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names) + 2), 4))
  width = 0.8 / len(METRICS)
  for j, key in enumerate(METRICS):
    positions = np.arange(len(names)) + (j - len(METRICS) / 2 + 0.5) * width
    cells = [rows[n][key] for n in names]
    spread = [c[1] for c in cells] if isinstance(cells[0], tuple) else None
    bars = ax.bar(positions, [c[0] if spread else c for c in cells], width, label=key,
                  yerr=spread, capsize=2 if spread else 0)
    if key == 'R1':
      ax.bar_label(bars, fmt='%.1f', fontsize=7)
  ax.set_xticks(np.arange(len(names)), names, rotation=20, ha='right', fontsize=8)
  ax.set_ylabel('%')
  ax.set_ylim(0, 115)  # room for the legend above 100%
  ax.set_title(title)
  ax.legend(ncol=5, fontsize=8)
  fig.tight_layout()
  fig.savefig(out_path, dpi=90)
  plt.close(fig)
