r"""Input-pipeline throughput alone: TrainStream decoding and cropping JPEGs, per worker count.

  python scripts/input_benchmark.py --num_images=512 --workers=0,1,2
  python scripts/input_benchmark.py --folder=/data/imagenet --split=train --num_images=0

Without --folder it writes --num_images synthetic photo-like JPEGs (about
500x375, ImageNet's typical size) into a temporary folder first. Each worker
count then streams `--steps` batches of --image_size in `random_resized`
mode (decode, Inception crop, resize; no device). The first --warmup batches
include starting the workers and are timed apart. Prints one line per worker
count, then one JSON line, last. Check `uptime` first: other load on the
machine changes the figures.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--folder", default="", help="image folder ROOT (ROOT/<split>/<class>/...); "
                 "empty: write synthetic JPEGs")
  p.add_argument("--split", default="train")
  p.add_argument("--num_images", type=int, default=512, help="synthetic images to write")
  p.add_argument("--num_classes", type=int, default=10)
  p.add_argument("--image_size", type=int, default=224, help="output side, pixels")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--steps", type=int, default=0, help="timed batches; 0: one epoch less warmup")
  p.add_argument("--warmup", type=int, default=2, help="batches timed apart (worker start-up)")
  p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
  p.add_argument("--prefetch", type=int, default=2)
  p.add_argument("--train_crop", default="random_resized", choices=("random_resized", "pad"))
  return p.parse_args(argv)


def write_synthetic_jpegs(root: str, split: str, num_images: int, num_classes: int,
                          seed: int = 0) -> None:
  """Smooth random pictures with fine noise, so JPEG sizes and decode costs look like photos."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  for i in range(num_images):
    width, height = int(rng.integers(400, 601)), int(rng.integers(300, 451))
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    pixels = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.int16)
    pixels = np.clip(pixels + rng.integers(-12, 13, pixels.shape), 0, 255).astype(np.uint8)
    class_dir = os.path.join(root, split, f"class_{i % num_classes:03d}")
    os.makedirs(class_dir, exist_ok=True)
    Image.fromarray(pixels).save(os.path.join(class_dir, f"{i:06d}.jpg"), quality=90)


def measure(source, workers: int, args) -> dict:
  """Streams warmup + steps batches with `workers` processes; returns timings."""
  from resnet_jax.data import streaming
  steps = args.steps or max(1, len(source) // args.batch_size - args.warmup)
  stream = streaming.TrainStream(
      source, global_batch_size=args.batch_size, image_size=args.image_size,
      train_crop=args.train_crop, crop_scale=(0.08, 1.0), seed=0, start_step=0,
      num_steps=args.warmup + steps, workers=workers, prefetch=args.prefetch)
  with stream:
    start = time.perf_counter()
    for _ in range(args.warmup):
      next(stream)
    warm = time.perf_counter()
    count = sum(1 for _ in stream)
    end = time.perf_counter()
  return {"workers": workers, "batches": count, "warmup_s": round(warm - start, 3),
          "seconds": round(end - warm, 3),
          "images_per_second": round(count * args.batch_size / max(end - warm, 1e-9), 1)}


def main(argv=None) -> None:
  args = parse_args(argv)
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # Grain's mp_prefetch reads absl flags.
  from resnet_jax.data import sources
  with tempfile.TemporaryDirectory() as tmp:
    root = args.folder
    if not root:
      root = tmp
      start = time.perf_counter()
      write_synthetic_jpegs(root, args.split, args.num_images, args.num_classes)
      print(f"wrote {args.num_images} JPEGs in {time.perf_counter() - start:.1f} s", flush=True)
    source = sources.FolderSource(root, args.split)
    print(f"{len(source)} images, batch {args.batch_size}, {args.train_crop} crop to "
          f"{args.image_size}, load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs",
          flush=True)
    results = []
    for workers in (int(w) for w in args.workers.split(",")):
      result = measure(source, workers, args)
      results.append(result)
      print(f"workers={workers}: {result['images_per_second']:8.1f} images/s over "
            f"{result['batches']} batches ({result['seconds']:.2f} s; first {args.warmup} "
            f"batches {result['warmup_s']:.2f} s)", flush=True)
  print(json.dumps({"load_average": os.getloadavg()[0], "results": results}))


if __name__ == "__main__":
  main()
