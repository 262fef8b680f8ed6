"""The benchmark's PyTorch side: a train step of torchvision's ResNet + torch.nn.GRU, or of
open_clip's CLIP encoders, timed.

  python -m benchmarks.torch_reference --batch 32 --height 384 --width 128 --parts image,text,both
  python -m benchmarks.torch_reference --batch 64 --parts clip     # ViT-B/16 + text Transformer

`benchmarks.benchmark --what=reference` runs this in a child process (torchvision must not be
imported after TensorFlow, and each framework gets the cores to itself) and times the same model
in JAX (`benchmark.ReferenceModel`): ResNet -> global pool -> FC for images; embeddings -> one
bi-GRU over the sentence and over each phrase -> FC for texts; a shared ID classifier (cross
entropy on both) and a bidirectional hinge ranking loss on cosines; Adam. `image` and `text`
time each branch alone (its ID loss only), `both` the whole step. `clip`: open_clip's CLIP
(QuickGELU, as OpenAI's weights) at the given image size and --max_words tokens, an ID loss on the
image and sentence features and CLIP's contrastive loss (temperature 0.02, as IRRA), Adam; JAX's
side is `benchmark.ClipReferenceModel`. Needs requirements-dev.txt.
"""
import argparse
import json

import torch
import torchvision

from benchmarks.timing import median_seconds


class ReferenceModel(torch.nn.Module):

  def __init__(self, args):
    super().__init__()
    resnet = getattr(torchvision.models, f'resnet{args.depth}')(weights=None)
    self.backbone = torch.nn.Sequential(*list(resnet.children())[:-2])
    self.image_fc = torch.nn.Linear(resnet.fc.in_features, args.embed_dim)
    self.embed = torch.nn.Embedding(args.vocab, args.word_dim)
    self.gru = torch.nn.GRU(args.word_dim, args.embed_dim // 2, batch_first=True,
                            bidirectional=True)
    self.text_fc = torch.nn.Linear(args.embed_dim, args.embed_dim)
    self.classifier = torch.nn.Linear(args.embed_dim, args.classes, bias=False)

  def encode_image(self, images):
    return self.image_fc(self.backbone(images).mean((2, 3)))

  def encode_text(self, tokens, phrases):
    def states(words):
      _, h = self.gru(self.embed(words))  # h [2, N, H]: last state of each direction
      return torch.cat([h[0], h[1]], dim=-1)
    phrase_states = states(phrases.flatten(0, 1)).unflatten(0, phrases.shape[:2])
    return self.text_fc(states(tokens) + phrase_states.mean(1))


def reference_loss(model, batch, part: str):
  cross_entropy = torch.nn.functional.cross_entropy
  loss = 0
  if part in ('image', 'both'):
    v = model.encode_image(batch['image'])
    loss = loss + cross_entropy(model.classifier(v), batch['label'])
  if part in ('text', 'both'):
    t = model.encode_text(batch['tokens'], batch['phrases'])
    loss = loss + cross_entropy(model.classifier(t), batch['label'])
  if part == 'both':
    cos = torch.nn.functional.normalize(v, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T
    positive = cos.diag()
    negative = batch['label'][:, None] != batch['label'][None, :]
    hinge = (torch.relu(0.2 - positive[:, None] + cos) + torch.relu(0.2 - positive[None, :] + cos))
    loss = loss + (hinge * negative).sum() / len(cos)
  return loss


def clip_model(args):
  from open_clip.model import CLIP  # pylint: disable=g-import-not-at-top
  return CLIP(embed_dim=args.clip_embed, quick_gelu=True, vision_cfg={
      'image_size': (args.height, args.width), 'patch_size': args.clip_patch,
      'width': args.clip_image_width, 'layers': args.clip_image_layers,
      'head_width': args.clip_image_width // args.clip_image_heads}, text_cfg={
          'context_length': args.max_words, 'vocab_size': 49408, 'width': args.clip_text_width,
          'heads': args.clip_text_heads, 'layers': args.clip_text_layers})


def clip_loss(model, classifier, batch):
  cross_entropy = torch.nn.functional.cross_entropy
  v, t = model.encode_image(batch['image']), model.encode_text(batch['tokens'])
  logits = (torch.nn.functional.normalize(v, dim=-1)
            @ torch.nn.functional.normalize(t, dim=-1).T) / 0.02
  pairs = torch.arange(len(v))
  identities = cross_entropy(classifier(v), batch['label']) + cross_entropy(classifier(t),
                                                                             batch['label'])
  return identities + (cross_entropy(logits, pairs) + cross_entropy(logits.T, pairs)) / 2


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for name, default in (('batch', 32), ('height', 384), ('width', 128), ('depth', 50),
                        ('embed_dim', 1024), ('word_dim', 512), ('vocab', 5000),
                        ('classes', 11003), ('max_words', 64), ('max_phrases', 26),
                        ('max_phrase_words', 8), ('reps', 3), ('clip_patch', 16),
                        ('clip_image_width', 768), ('clip_image_layers', 12),
                        ('clip_image_heads', 12), ('clip_text_width', 512),
                        ('clip_text_layers', 12), ('clip_text_heads', 8), ('clip_embed', 512)):
    parser.add_argument(f'--{name}', type=int, default=default)
  parser.add_argument('--parts', default='image,text,both')
  args = parser.parse_args()
  torch.manual_seed(0)
  batch = {'image': torch.randn(args.batch, 3, args.height, args.width),
           'label': torch.randint(0, args.classes, (args.batch,)),
           'tokens': torch.randint(1, args.vocab, (args.batch, args.max_words)),
           'phrases': torch.randint(1, args.vocab, (args.batch, args.max_phrases,
                                                    args.max_phrase_words))}
  parts = args.parts.split(',')
  if 'clip' in parts:
    batch['tokens'][:, -1] = 49407  # the end-of-text token, pooled at
    model = clip_model(args).train()
    classifier = torch.nn.Linear(args.clip_embed, args.classes, bias=False)
    loss_fn = lambda part: clip_loss(model, classifier, batch)
    parameters = [p for name, p in model.named_parameters() if name != 'logit_scale']  # unused
    parameters += list(classifier.parameters())
  else:
    model = ReferenceModel(args).train()
    loss_fn = lambda part: reference_loss(model, batch, part)
    parameters = list(model.parameters())
  params = sum(p.numel() for p in parameters)
  optimizer = torch.optim.Adam(parameters, lr=2e-4)
  for part in parts:
    def step(part=part):
      optimizer.zero_grad(set_to_none=True)
      loss_fn(part).backward()
      optimizer.step()
    seconds = median_seconds(step, args.reps)
    print(json.dumps({'what': f'reference_{part}', 'framework': f'torch {torch.__version__}',
                      'threads': torch.get_num_threads(), 'batch': args.batch, 'params': params,
                      'step_s': float(f'{seconds:.4g}'),
                      'images_per_s': float(f'{args.batch / seconds:.4g}')}), flush=True)


if __name__ == '__main__':
  main()
