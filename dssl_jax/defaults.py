"""Every default of the paper (DSSL, ACM MM 2021, section 4.1.2); dataset configs override a few.

Each switch of the ablation Tables 1-5 is one field here, so every row is one --config override.
configs/base.py is this function; it lives in the package because a workdir saved before an
option existed reads back with the option's default from here (checkpoints.load_workdir).
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = data = ml_collections.ConfigDict()
  data.name = 'cuhk_pedes'  # cuhk_pedes | icfg_pedes | rstp_reid | synthetic
  data.manual_dir = ''  # the raw dataset folder as published (annotation json + imgs/)
  data.data_dir = ''  # where TFDS writes the built dataset ('' = ~/tensorflow_datasets)
  # noun phrases' POS tagger: perceptron (NLTK's, the paper's; a download) | lexicon (built in,
  # other phrases) | auto (perceptron if installed) (dssl_jax/data/captions.py)
  data.tagger = 'perceptron'
  data.max_phrases = 26  # n <= 26 noun phrases per sentence
  data.min_word_count = 2  # vocabulary: train words seen at least twice
  data.strict = False  # stop at the first bad entry instead of skipping it
  data.image_size = (384, 128)  # height, width
  data.max_words = 64  # sentence length after truncation (CLIP: BPE tokens, start/end included)
  data.max_phrase_words = 8  # phrase length after truncation (CLIP separate: BPE tokens, as above)
  # training only, in this order: flip (horizontal) | crop (pad 10, random crop back) | erase
  # (random erasing, p = 0.5). The paper names no augmentation: its configs keep the flip.
  data.augment = ('flip',)
  data.shuffle_buffer = 4096
  # Where the step's images are augmented: 'device' (inside the jitted step, on uint8 batches) or
  # 'host' (tf.data, per pair, then float32 batches: the first implementation, kept to compare).
  data.augment_on = 'device'
  # The train split decoded once at the train size: 'auto' (memory when it fits
  # decoded_memory_gb per process, else a uint8 copy on disk beside the TFDS data), 'memory',
  # 'disk', or 'none' (decode every epoch). CUHK-PEDES's train split is ~5 GB at 384x128.
  data.cache_decoded = 'auto'
  data.decoded_memory_gb = 8.0
  data.input_threads = 0  # the train pipeline's threads (0: tf.data's own pool, every core)
  data.synthetic = ml_collections.ConfigDict(  # split_fractions: of the identities, train/val/test
      {'identities': 500, 'images_per_identity': 4, 'seed': 0, 'split_fractions': (0.7, 0.1, 0.2),
       'image_size': (288, 96)})  # of the generated files (height, width)

  config.model = model = ml_collections.ConfigDict()
  # resnet: ImageNet ResNet + bi-GRU (the paper) | clip: CLIP's ViT + text Transformer (model.clip)
  model.backbone = 'resnet'
  model.depth = 50  # ResNet depth: 18 | 34 | 50
  model.width = 64  # ResNet base width (64 = torchvision's)
  model.zero_init_residual = False  # from scratch: each block's last BN scale starts at 0
  # .npz of the ImageNet ResNet (python -m dssl_jax.weights) or of CLIP (python -m
  # dssl_jax.clip_weights); 'scratch' = random on purpose; '' refuses to train
  model.backbone_weights = ''
  model.embed_dim = 1024  # p
  model.num_strips = 6  # k
  model.word_dim = 512  # word embedding size (not given by the paper)
  model.gn_groups = 32  # group normalization groups (not given by the paper)
  model.baseline = False  # Table 1/2 first row: no separation, straight to a common space
  model.spsm_spfm = True  # Table 2: surroundings-person separation and fusion
  model.sam = True  # Table 2: salient attention module
  model.sdm = True  # Table 2: signal denoising module
  model.spfm = True  # surroundings-person fusion (Align II's V_R and its ID term); needs SPSM
  model.pdm = True  # person describing module (Align III's T_R and its ID term)
  model.sdm_zero_ratio = 0.5  # Table 4: r
  model.sdm_hidden = 0  # width of SDM's code (not given by the paper; 0 = p / 2)
  model.sdm_zeroing = 'loss'  # eq. 1's zeroing reaches: loss (eq. 2 only) | features (all uses)
  model.spfm_fusion = 'add'  # Table 3: add | concat
  model.clip = ml_collections.ConfigDict({  # model.backbone = 'clip'; defaults: OpenAI ViT-B/16
      'bpe_path': '',  # bpe_simple_vocab_16e6.txt.gz, the tokenizer's merges (open_clip ships it)
      'patch': 16, 'image_width': 768, 'image_layers': 12, 'image_heads': 12,
      'text_width': 512, 'text_layers': 12, 'text_heads': 8, 'context': 77, 'vocab_size': 49408,
      'embed_dim': 512, 'activation': 'quick_gelu',  # quick_gelu: OpenAI's weights | gelu
      # M_T: span (each phrase's tokens pooled from the sentence's pass) | separate (one pass each)
      'phrases': 'span'})
  model.dtype = 'float32'  # bfloat16: mixed precision (backbone + GRU; GPU/TPU, slow on CPU)

  config.loss = loss = ml_collections.ConfigDict()
  loss.margin = 0.2  # alpha of the ranking loss (eq. 3)
  # eq. 3 (and eq. 2's rank terms) over the batch: mean (over anchors; chosen on val on the
  # synthetic default, docs/experiments/rank_reduction.md) | sum (as printed: x B against ID)
  loss.rank_reduction = 'mean'
  loss.align1 = True  # Table 1: V_P <-> T_P (eq. 5)
  loss.align2 = True  # V_G <-> V_R (eq. 8)
  loss.align2_surroundings = 'gallery'  # V_R for image i, text j: gallery (V_S^i) | own (V_S^j)
  loss.align3 = True  # T_G <-> T_R (eq. 10)
  loss.align4 = True  # CA(T_P, V_L) <-> T_P (eq. 13)
  loss.align5 = True  # CA(V_P, T_L) <-> V_P (eq. 14)
  loss.mec = True  # Table 2: mutual exclusion constraint (eq. 6)
  # squared_cosine: mean cos(V_P^i, V_S^j)^2, scale-free | cosine: its root, which pushes at full
  # strength however small the overlap | literal: ||P^T S|| as printed (losses.mec_loss)
  loss.mec_form = 'squared_cosine'
  loss.mec_weight = 1.0
  loss.sdm = 'rank'  # Table 5: rank | euclidean reconstruction loss (eq. 2)
  loss.sdm_phrases = 'sum'  # eq. 2's phrase slots: sum (as printed) | mean (over slots in use)
  # eq. 2's phrase negatives: other_person (as printed) | distinct (not the same words)
  loss.sdm_phrase_negatives = 'other_person'

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 32
  train.stage1_epochs = 10  # ID loss only, backbone frozen
  train.stage1_lr = 1e-3
  train.stage2_epochs = 30  # full loss, everything trained
  train.stage2_lr = 2e-4
  train.lr_decay_epochs = 10  # stage-2 lr divided by 10 every 10 epochs
  train.lr_decay_factor = 0.1
  train.stage2_schedule = 'step'  # step: the decays above (the paper) | cosine: warm-up, cosine
  train.warmup_epochs = 0  # cosine: linear warm-up from warmup_factor * stage2_lr
  train.warmup_factor = 0.1
  train.encoder_lr_factor = 1.0  # stage 2: the encoders' lr as a fraction of the heads' stage2_lr
  train.bias_lr_factor = 1.0  # stage 2: biases' lr multiplier
  train.weight_decay = 0.0  # stage 2: L2 added to the gradient (torch Adam's), not on biases
  train.log_every_steps = 50
  train.checkpoint_every_steps = 1000  # and at the end of each stage
  train.keep_checkpoints = 3
  train.eval_every_epochs = 1  # on val, to pick the best checkpoint (never on test)
  train.profile_steps = ()  # (first, last): a profiler trace of those steps into WORKDIR/tensorboard
  train.distributed = False  # jax.distributed.initialize() (multi-host; see launch/)

  config.eval = ev = ml_collections.ConfigDict()
  ev.split = 'test'
  # best: the best on val (else the last) | last | a step kept in WORKDIR/checkpoints/, e.g. '900'
  ev.checkpoint = 'best'
  ev.batch_size = 64
  # Sim_TI's weights of the CA terms with visual parts (lambda1) and textual phrases (lambda2);
  # None: the paper's 0.5 where Align IV (lambda1) or Align V (lambda2) trained the term, else 0
  # (dssl_jax/evaluate.py, sim_ti_weights)
  ev.lambda1 = ml_collections.config_dict.placeholder(float)
  ev.lambda2 = ml_collections.config_dict.placeholder(float)
  # CLIP backbones: rank by CLIP's own features, cos(projected class token, projected end-of-text
  # token), from model.backbone_weights with no training and no checkpoint (--mode=eval)
  ev.zero_shot = False
  ev.image_to_text = False  # also rank the captions for each image (under 'image_to_text')
  ev.rerank = True  # also report cross-modal re-ranking (DSSL + RR, Table 6)
  ev.rerank_k1 = 10  # images re-ordered per query (not given by the paper)
  ev.rerank_k_near = 5  # nearest texts that vote (not given by the paper)
  return config
