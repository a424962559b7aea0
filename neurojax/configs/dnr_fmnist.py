"""DNR on small-data Fashion-MNIST: the `make run` job (under 3 minutes of training here).

The DNR recipe of `configs/dnr_flowers.py` (SNIP keep-mask at 80% between
generations, fresh SGD and restarted warm-up + cosine each generation, label
smoothing 0.1, weight decay 1e-4) in a regime this CPU can run:
- 50 training images per class (500; a balanced subset drawn with
  `data.subset_seed`), tested on all 10,000 test images;
- ResNet-18 in torchvision's layout with the small-image stem (3x3 conv, no
  max-pool) at width 8 (8, 16, 32, 64 channels; 0.18M params);
- 28 px, random crop (padding 2) and flip;
- 5 generations (GENS) of 20 epochs (EPOCHS) at batch 32, lr 0.1;
- the original's init and re-draw, as configs/dnr_flowers.py: the fc
  kaiming-normal (`model.fc_init`), reset entries re-drawn from PyTorch's
  default layer init (`generations.redraw="original"`).

Other methods are a flag away (benchmarks/generations_fmnist.py runs them
all): --config.generations.policy=ke|llf|layerwise, or the long baseline
--config.generations.policy=none --config.generations.num_generations=1
--config.num_epochs=<GENS x EPOCHS>.
"""

from neurojax.config import base_config

GENS, EPOCHS = 5, 20


def get_config():
  c = base_config("resnet18")
  c.model.stem = "small"
  c.model.width = 8
  c.model.fc_init = "kaiming_normal"     # the original Split_ResNet18's classifier
  c.method = "generations"
  c.data.per_class = 50
  c.data.crop_padding = 2
  c.data.flip = True
  c.data.mean = (0.2860,)
  c.data.std = (0.3530,)
  c.batch_size = 32
  c.num_epochs = float(EPOCHS)           # per generation
  c.optimizer.weight_decay = 1e-4
  c.schedule.lr = 0.1
  c.schedule.warmup_epochs = 2.0
  c.label_smoothing = 0.1
  c.eval_every_steps = 100_000           # only at each generation's end
  c.checkpoint_every_steps = 5 * 15      # every 5 epochs (500 // 32 = 15 steps)
  c.log_every_steps = 15
  c.generations.policy = "dnr"
  c.generations.num_generations = GENS
  c.generations.reset = 0.2              # re-draw the 20% least salient weights
  return c
