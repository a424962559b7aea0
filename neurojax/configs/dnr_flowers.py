"""Dynamic Neural Regeneration (DNR, NeurIPS 2024) on Flowers102, ResNet-18.

The recipe of METHODS.md section 4, for a TPU VM with TFDS
`oxford_flowers102` prepared as array_record:

    tfds build oxford_flowers102 --file_format=array_record
    python -m neurojax.main --config=configs/dnr_flowers.py --workdir=DIR

- torchvision's ResNet-18 (7x7 stem, max-pool), as the original's
  `Split_ResNet18` initialises it (`--init=kaiming_normal --mode=fan_in`):
  convs and the fc weight kaiming-normal fan-in (`model.fc_init="kaiming_normal"`:
  std 0.0625 at 512 -> 102, where nn.Linear's default gives 0.0255), the fc
  bias PyTorch's default U(-1/sqrt(512), 1/sqrt(512)), BN scale 1, bias 0;
- TFDS splits: train (1,020 images) for training, test (6,149) for the
  reported top-1; `--config.data.eval_split=validation` evaluates on the
  1,020 validation images instead, `--config.data.train_split=train+validation`
  trains on both;
- images resized to 256x256 (aspect not kept, as the original loaders), then
  random-resized-crop 224 + flip for training, centre crop 224 for eval;
  ImageNet mean/std;
- SGD, momentum 0.9, weight decay 1e-4, label smoothing 0.1, lr 0.256 at
  batch 32 (the other source: `--config.schedule.lr=0.253
  --config.batch_size=256`), 5 warm-up epochs then cosine, restarted every
  generation with a fresh optimizer;
- 11 generations x 200 epochs; between generations SNIP (|w * sum |g||, BN in
  eval mode, ceil(batches/32) batches) keeps the 80% most salient conv/fc
  weights (the conv and fc weights, never BN, biases or downsample convs:
  `reparameterize_non_sparse` in the DNR repo's utils/net_utils.py) and
  re-draws the rest from PyTorch's default layer init, kaiming_uniform(a=
  sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (`re_init_weights`;
  `generations.redraw="original"`; `model_init` re-draws from the model's
  own kaiming-normal instead, 2.45x the std on layer4.0.conv1). That
  function also reads `cfg.use_shrink_perturb`, which no argument of the
  released configs/base_config.py defines (an AttributeError as published):
  shrink-and-perturb is taken as off, the kept weights are left as they are.

`get_config(policy, dataset)` is shared by the KE, LLF, layer-wise and
long-baseline configs next to this one, so they differ only in the mask
policy, and by the configs of the DNR paper's other datasets
(`dnr_cub200.py`, `dnr_dogs.py`, `dnr_aircraft.py`, `dnr_mit67.py`), which
differ only in `DATASETS`' row: the recipe above is the same on every one.
"""

from neurojax.config import base_config

# dataset: (source, TFDS name, train split, eval split, training images).
# The folder datasets read config.data.data_dir/<split>/<class>/<image>.
DATASETS = {
    "flowers": ("tfds", "oxford_flowers102", "train", "test", 1020),
    "cub200": ("tfds", "caltech_birds2011", "train", "test", 5994),
    "dogs": ("tfds", "stanford_dogs", "train", "test", 12000),
    "aircraft": ("folder", "fgvc_aircraft", "trainval", "test", 6667),
    "mit67": ("folder", "mit67", "train", "test", 5360),
}


def get_config(policy="dnr", dataset="flowers"):
  c = base_config("resnet18")
  c.model.fc_init = "kaiming_normal"     # the original Split_ResNet18's classifier
  c.method = "generations"
  source, name, train_split, eval_split, num_train = DATASETS[dataset]
  c.data.source, c.data.name = source, name
  c.data.train_split, c.data.eval_split = train_split, eval_split
  c.data.image_size = 224
  c.data.eval_resize = 256
  c.data.resize_square = True
  c.data.random_resized_crop = True
  c.data.flip = True
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.data.num_threads = 16
  c.data.prefetch = 4
  c.batch_size = 32
  c.eval_batch_size = 256
  c.num_epochs = 200.0                  # per generation
  c.optimizer.weight_decay = 1e-4
  c.schedule.lr = 0.256
  c.schedule.warmup_epochs = 5.0
  c.label_smoothing = 0.1
  # An epoch is num_train // 32 steps (Flowers102: 31). Evaluate every 50
  # epochs (every generation's end is evaluated anyway); checkpoint every 10.
  c.eval_every_steps = 50 * (num_train // c.batch_size)
  c.checkpoint_every_steps = 10 * (num_train // c.batch_size)
  c.generations.policy = policy
  c.generations.num_generations = 11
  c.generations.reset = 0.2              # re-draw the 20% least salient weights
  c.generations.split_rate = 0.5
  c.generations.reset_layer = "layer4"
  c.generations.redraw = "original"      # per policy, as the original code re-draws
  return c
