r"""Input-pipeline throughput alone: TrainStream against PyTorch's DataLoader, per worker count.

  python scripts/input_benchmark.py --num_images=768 --workers=0,1,2 --epochs=3
  python scripts/input_benchmark.py --folder=/data/imagenet --split=train --num_images=0

Without --folder it writes --num_images synthetic photo-like JPEGs (about
500x375, ImageNet's typical size) into a temporary folder first. For each
worker count, both sides read the same folder for --epochs epochs of
--batch_size batches of --image_size pictures: ours `TrainStream` in
`random_resized` mode (decode, Inception crop, resize; no device), PyTorch's
`DataLoader` over torchvision's `ImageFolder` with `RandomResizedCrop`,
`RandomHorizontalFlip` and `PILToTensor` (shuffled, workers restarted each
epoch as by default, or kept with --torch_persistent). Images/s counts every
batch over the whole time, starting the workers included; the time to the
first batch is printed apart. Workers 0 means threads of the main process for
ours (`--prefetch` of them) and the main process alone for PyTorch. Without
torch and torchvision the PyTorch side is skipped and the script says so.
Prints one line per side and worker count, then one JSON line, last. Check
`uptime` first: other load on the machine changes the figures.
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
  p.add_argument("--num_images", type=int, default=768, help="synthetic images to write")
  p.add_argument("--num_classes", type=int, default=10)
  p.add_argument("--image_size", type=int, default=224, help="output side, pixels")
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--epochs", type=int, default=3, help="epochs read per side and worker count")
  p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
  p.add_argument("--prefetch", type=int, default=2, help="batches buffered per worker")
  p.add_argument("--train_crop", default="random_resized", choices=("random_resized", "pad"))
  p.add_argument("--sides", default="resnet_jax,torch", help="comma-separated: resnet_jax, torch")
  p.add_argument("--torch_persistent", action="store_true",
                 help="keep PyTorch's workers across epochs (persistent_workers=True)")
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


def _result(side: str, workers: int, batches: int, batch_size: int, first_s: float,
            seconds: float) -> dict:
  return {"side": side, "workers": workers, "batches": batches, "first_batch_s": round(first_s, 3),
          "seconds": round(seconds, 3),
          "images_per_second": round(batches * batch_size / max(seconds, 1e-9), 1)}


def measure(source, workers: int, args) -> dict:
  """Streams --epochs epochs with `workers` processes; returns timings."""
  from resnet_jax.data import streaming
  steps = args.epochs * (len(source) // args.batch_size)
  stream = streaming.TrainStream(
      source, global_batch_size=args.batch_size, image_size=args.image_size,
      train_crop=args.train_crop, crop_scale=(0.08, 1.0), seed=0, start_step=0,
      num_steps=steps, backend=streaming.backend_for(workers, args.prefetch))
  start = time.perf_counter()
  with stream:
    next(stream)
    first = time.perf_counter()
    count = 1 + sum(1 for _ in stream)
  end = time.perf_counter()
  return _result("resnet_jax", workers, count, args.batch_size, first - start, end - start)


def import_torch_side():
  """(torch, torchvision) or None when either is missing or does not import."""
  import types
  try:
    import torch
    # A torchvision wheel built for another torch fails to register its C ops;
    # ImageFolder and the PIL transforms do not need them.
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    import torchvision
  except Exception as e:  # ImportError, or a wheel that does not load.
    print(f"PyTorch side skipped: cannot import torch and torchvision ({type(e).__name__}: "
          f"{e}); pip install torch torchvision to compare", flush=True)
    return None
  return torch, torchvision


def measure_torch(torch, torchvision, root: str, workers: int, args) -> dict:
  """PyTorch's DataLoader over torchvision's ImageFolder for --epochs epochs."""
  from torchvision import transforms
  if args.train_crop == "random_resized":
    crop = transforms.RandomResizedCrop(args.image_size)
  else:
    crop = transforms.Compose([transforms.Resize(args.image_size),
                               transforms.CenterCrop(args.image_size)])
  dataset = torchvision.datasets.ImageFolder(
      os.path.join(root, args.split),
      transforms.Compose([crop, transforms.RandomHorizontalFlip(), transforms.PILToTensor()]))
  loader = torch.utils.data.DataLoader(
      dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=workers,
      persistent_workers=args.torch_persistent and workers > 0,
      prefetch_factor=args.prefetch if workers else None)
  start = time.perf_counter()
  first, count = None, 0
  for _ in range(args.epochs):
    for _batch in loader:
      count += 1
      first = first or time.perf_counter()
  end = time.perf_counter()
  del loader  # Stops persistent workers.
  return _result("torch", workers, count, args.batch_size, first - start, end - start)


def main(argv=None) -> None:
  args = parse_args(argv)
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # Grain's mp_prefetch reads absl flags.
  from resnet_jax.data import sources
  sides = args.sides.split(",")
  torch_side = import_torch_side() if "torch" in sides else None
  if torch_side is not None:
    torch_side[0].set_num_threads(1)  # As each DataLoader worker does.
  with tempfile.TemporaryDirectory() as tmp:
    root = args.folder
    if not root:
      root = tmp
      start = time.perf_counter()
      write_synthetic_jpegs(root, args.split, args.num_images, args.num_classes)
      print(f"wrote {args.num_images} JPEGs in {time.perf_counter() - start:.1f} s", flush=True)
    source = sources.FolderSource(root, args.split)
    print(f"{len(source)} images, batch {args.batch_size}, {args.epochs} epochs, "
          f"{args.train_crop} crop to {args.image_size}, load average "
          f"{os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
    results = []
    for workers in (int(w) for w in args.workers.split(",")):
      pair = {}
      if "resnet_jax" in sides:
        pair["resnet_jax"] = measure(source, workers, args)
      if torch_side is not None:
        pair["torch"] = measure_torch(*torch_side, root, workers, args)
      for result in pair.values():
        results.append(result)
        print(f"workers={workers} {result['side']:>10}: {result['images_per_second']:7.1f} "
              f"images/s over {result['batches']} batches ({result['seconds']:.2f} s, first "
              f"batch after {result['first_batch_s']:.2f} s)", flush=True)
      if len(pair) == 2:
        ratio = pair["resnet_jax"]["images_per_second"] / pair["torch"]["images_per_second"]
        print(f"workers={workers}      ratio: {ratio:.2f}x PyTorch", flush=True)
  print(json.dumps({"load_average": os.getloadavg()[0], "cpus": os.cpu_count(),
                    "results": results}))


if __name__ == "__main__":
  main()
