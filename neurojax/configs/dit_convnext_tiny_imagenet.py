"""Dit-ConvNeXt-T (Dit-CNN, NeurIPS 2024) on ImageNet: the Dit ImageNet recipe.

METHODS.md section 2 (reported top-1: T 82.6, S 83.6, B 84.2). For TPU VMs
with TFDS `imagenet2012` prepared as array_record (it needs the manual
download, then `tfds build imagenet2012 --file_format=array_record`):

    python -m neurojax.main --config=configs/dit_convnext_tiny_imagenet.py --workdir=DIR

- timm's ConvNeXt-T with the quadratic term at stage 0, block 2 (+96^3
  params); `configs/dit_convnext_{small,base}_imagenet.py` for S and B;
- AdamW, lr 0.006 at an effective batch of 4096 = batch_size 512 x
  grad_accum_steps 8 (on 64+ chips: `--config.batch_size=4096
  --config.optimizer.grad_accum_steps=1`), weight decay 0.08 on the
  weights only (no decay on biases, LayerNorm and layer-scale params, as
  timm's 1-D rule), betas (0.9, 0.999), eps 1e-8;
- cosine to 0 over 300 epochs after 20 linear warm-up epochs;
- RandomResizedCrop 224 + flip, RandAugment rand-m9-mstd0.5 (2 ops; timm's
  increasing op set, as ConvNeXt's training script), mixup 0.8, cutmix 1.0
  (switch prob 0.5), random erasing 0.25, drop path 0.1, label smoothing
  0.1, model EMA 0.9998 (evaluated as eval/ema_*), bf16 compute;
- eval: resize the shorter side to 235 = int(224 / 0.95) (crop_pct 0.95),
  centre crop 224; ImageNet mean/std.
`--config.model.name=convnext_tiny` is the plain ConvNeXt. The quadratic term gets the base lr here (the 10x group is the CIFAR
recipe's); `--config.optimizer.lr_groups="(('quadratic', 10.0),)"` adds it.
"""

from neurojax.config import base_config


def get_config(model="dit_convnext_tiny"):
  c = base_config(model)
  c.model.drop_path = 0.1
  c.data.source = "tfds"
  c.data.name = "imagenet2012"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 224
  c.data.eval_resize = 235                  # crop_pct 0.95
  c.data.random_resized_crop = True
  c.data.flip = True
  c.data.randaugment_ops = 2
  c.data.randaugment_magnitude = 9.0
  c.data.randaugment_magnitude_std = 0.5
  c.data.random_erasing = 0.25
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.data.num_threads = 64
  c.data.prefetch = 4
  c.batch_size = 512
  c.eval_batch_size = 500
  c.num_epochs = 300.0
  c.optimizer.name = "adamw"
  c.optimizer.weight_decay = 0.08
  c.optimizer.weight_decay_exclude = r"(bias|scale|gamma)$"
  c.optimizer.grad_accum_steps = 8
  c.schedule.name = "cosine"
  c.schedule.lr = 0.006
  c.schedule.warmup_epochs = 20.0
  c.label_smoothing = 0.1
  c.mix.mixup_alpha = 0.8
  c.mix.cutmix_alpha = 1.0
  c.mix.switch_prob = 0.5
  c.ema_decay = 0.9998
  c.compute_dtype = "bfloat16"
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2500          # an epoch is 2,502 steps of 512
  return c
