"""Base configuration: every field the trainer reads, with its unit.

Not a recipe by itself; `configs/resnet18.py`, `tutorial.py`, `tiny.py` and
`finetune.py` start from it and change a few fields.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Data: any TFDS image-classification dataset with `image` and `label`,
  # "folder:ROOT" for ROOT/<split>/<class>/<images> (class = folder name), or "csv:PATH" for
  # a CSV listing one picture per row (path relative to the CSV's folder, or absolute).
  config.dataset = "cifar10"
  config.data_dir = ""  # TFDS data directory; "" means TFDS's default.
  config.manual_dir = ""  # Folder with the dataset's original archives (offline).
  config.train_split = "train"  # TFDS split string, split folder, or split column value.
  # The same, or "holdout:F" (0 < F < 1; folder or CSV only): F of each class of train_split,
  # rounded, at least 1 of a class of 2 or more, held out by a fixed hash of each picture's
  # path (data/holdout.py), the same on every host, resume and eval; training gets the rest.
  config.eval_split = "test"
  # Columns of a csv: dataset, named in its header row: the picture's path; its label (class
  # names are the training rows' labels, sorted as strings); its split (optional: without
  # this column every row is training data, and eval_split must be a holdout).
  config.csv_file_column = "file"
  config.csv_label_column = "label"
  config.csv_split_column = "split"
  # Multi-label CSVs (several classes per picture: labels multi-hot, the loss sigmoid binary
  # cross-entropy, eval's headline mAP): either a separator in the label cell (";" reads
  # "cat;dog"), or the classes' 0/1 columns, named in order ("cat,dog,car"), or "*" for every
  # column but the file and split ones. Both "": single-label. The run records multi_label
  # (True or False) in config.json, and eval and predict read it there.
  config.csv_label_separator = ""
  config.csv_label_columns = ""
  # A multi-label picture shows a class where its sigmoid probability is above this: eval's
  # per-class precision, recall and F1 and exact-match accuracy, predict's list of labels.
  config.multi_label_threshold = 0.5
  config.num_classes = 0  # 0: take it from the dataset.
  # Per-channel normalisation in [0, 1] pixel units; empty: the training set's.
  config.mean = ()
  config.std = ()
  config.crop_padding = 4  # Pixels of zero padding before the random crop; 0 disables.
  config.random_flip = True  # Random horizontal flip.
  config.image_size = 0  # Side of the images the model sees, pixels; 0: the data's own.
  # Regularising augmentations, on device after normalisation, drawn from fold_in(seed, step).
  config.cutout_size = 0  # Side of one zeroed (mean-valued) square per image, pixels; 0: off.
  config.mixup_alpha = 0.0  # Mixup: image and label weights ~ Beta(alpha, alpha); 0: off.
  config.cutmix_alpha = 0.0  # CutMix: pasted box area ~ Beta(alpha, alpha); 0: off. Both on:
  # each image gets one or the other, with even odds.
  # Test-time augmentation in eval and predict: "none"; "flip": mean logits of the image and
  # its mirror; "flip_translate" (airbench's): those two weighted 1/4 each, and the mirror
  # pairs of the image shifted 1 pixel down-right and 1 pixel up-left, 1/8 each.
  config.eval_tta = "none"
  # "memory": every split decoded once and held on each device (fast, for data that
  # fits); "stream": batches read from disk by a host pipeline (any size); "auto":
  # memory when the decoded train split fits in a quarter of the smallest device's
  # memory and its images share one size, else stream.
  config.input_pipeline = "auto"
  # "pad": images resized and centre-cropped to image_size, then pad-cropped by
  # crop_padding and flipped; "random_resized": Inception-style crop of crop_scale
  # of the area (aspect 3/4 to 4/3), then flip (stream only).
  config.train_crop = "pad"
  config.crop_scale = (0.08, 1.0)  # Area fractions for train_crop="random_resized".
  config.eval_crop_fraction = 0.0  # Eval centre crop of this fraction; 0: 0.875 with
  # random_resized, else 1.0 (the whole image).
  config.data_workers = 0  # Decoding processes of the stream pipeline; 0: in-process threads.

  # Model.
  config.model = "resnet18"
  config.stem = "cifar"  # "cifar": 3x3 conv, no pool. "imagenet": 7x7/2 conv + 3x3/2 pool.
  config.width = 64  # Base channel count.
  config.zero_init_residual = False  # Zero the last BN scale of each residual branch.
  config.dropout_rate = 0.0  # Dropout before the classifier.
  # "torchvision": kaiming-normal (fan-out) convolutions, as torchvision's ResNet; "pytorch":
  # convolutions and classifier as torch.nn's defaults, kaiming-uniform a=sqrt(5), i.e.
  # U(+-1/sqrt(fan_in)) (what a ResNet written with plain nn.Conv2d/nn.Linear starts from).
  config.conv_init = "torchvision"

  # Optimisation.
  config.batch_size = 128  # Global, over all devices.
  config.eval_batch_size = 0  # 0: same as batch_size.
  config.num_epochs = 200.0
  config.num_train_steps = 0  # > 0 overrides num_epochs (tests, benchmarks).
  config.learning_rate = 0.1  # Peak, for the global batch.
  # After warmup: "cosine" decay to 0, "linear" decay to 0 (with warmup, the triangular
  # schedule of the fast CIFAR recipes) or "constant".
  config.lr_schedule = "cosine"
  config.warmup_epochs = 1.0
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 5e-4  # L2 coefficient added to the gradient (as torch.optim.SGD).
  config.decay_bn_and_bias = True  # False: no weight decay on BN scales/biases and biases.
  config.label_smoothing = 0.0
  # Imbalanced classes (single-label; data/balance.py): "none"; "loss": each example's loss
  # times its class's weight w_c = N / (C x n_c), n_c of the N training examples in class c
  # (scikit-learn's "balanced": mean weight 1 over the training examples), a soft (smoothed,
  # mixed) target's weight sum_c target_c x w_c; "sample": the classes drawn equally, each
  # epoch a class-balanced resampling of the training split (same steps per epoch).
  config.class_balance = "none"
  # Micro-batches per optimizer step, run one after another inside the compiled step;
  # batch_size stays the global batch (each micro-batch is batch_size / this). BatchNorm
  # normalises each micro-batch by its own statistics and updates its running ones once
  # per micro-batch.
  config.grad_accum_steps = 1
  config.ema_decay = 0.0  # Per-step decay of a weight EMA (e.g. 0.999); 0: off. On: eval uses it.
  # Warm the EMA decay up as timm's ModelEmaV3(use_warmup=True) does: after t steps the decay
  # is min(ema_decay, 1 - (1 + t) ** -ema_warmup_power), so early weights fade fast. False:
  # ema_decay from the first step (the average then starts with the initial weights).
  config.ema_warmup = True
  # timm's default 2/3: the decay reaches 0.99 at step ~1,000 and 0.999 at ~31,600. A larger
  # power (timm suggests 3/4 for runs of ~100k steps) averages over more steps sooner.
  config.ema_warmup_power = 2 / 3
  config.half_precision = False  # bf16 compute; params and BN statistics stay float32.
  config.seed = 0

  # Fine-tuning.
  config.init_checkpoint = ""  # Workdir or Orbax checkpoint to start from.
  config.freeze_backbone = False  # Train only the classifier head.
  config.backbone_lr_scale = 1.0  # Backbone learning rate = this x learning_rate.

  # Knowledge distillation (Hinton et al. 2015), with consistent teaching (Beyer et al. 2022):
  # a frozen teacher, in eval mode, sees exactly the student's augmented batch (crop, flip,
  # cutout, mixup/CutMix), re-normalised with its own mean/std and resized to its own side.
  # Workdir or checkpoint of a run on the same classes, or published weights (torchvision:NAME,
  # hf-hub:ORG/REPO) fine-tuned to them; "": no teacher. Not saved in the student's checkpoints.
  config.teacher = ""
  # Per example, loss = alpha x KL(softmax(t/T) || softmax(s/T)) x T² + (1 - alpha) x the
  # label loss (cross-entropy on the smoothed, mixed targets), in nats. Alpha is a fraction
  # in [0, 1]: 0.9 with T = 4 is the KD setting of CRD (Tian et al. 2020) on CIFAR; 1 learns
  # from the teacher alone (Beyer et al.'s function matching).
  config.distill_alpha = 0.9
  # T > 0, dimensionless: divides both logits before the softmax; higher is softer, showing
  # more of the teacher's ranking of the wrong classes.
  config.distill_temperature = 4.0

  # Checkpoints, evaluation and logging.
  config.checkpoint_every_epochs = 1.0
  config.keep_checkpoints = 3  # Latest N kept, besides the best.
  config.eval_every_epochs = 1.0
  config.log_every_steps = 50
  # Training steps traced with the JAX profiler into <workdir>/profile/ (TensorBoard or
  # Perfetto), starting at the run's second step (its first compiles); 0: off.
  config.profile_steps = 0
  # Eval accuracies (fractions) whose first reach is timed, e.g. (0.94, 0.96): the eval line
  # gets time_to_<target>_s (seconds of training; compile, eval and saves excluded).
  config.target_accuracies = ()

  return config
