"""Framing and crops of one picture, against torchvision's transforms and written references."""

import math

import jax
import numpy as np
import pytest
from absl import flags
from PIL import Image

from resnet_jax.data import augment, images, sources, streaming
from tests.conftest import import_torchvision

# (width, height): landscape, portrait, 4:3, square and a 5:1 strip.
PHOTO_SIZES = [(500, 375), (375, 500), (640, 480), (300, 300), (1000, 200)]


@pytest.fixture(autouse=True)
def absl_flags_parsed():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _photo(width: int, height: int, seed: int) -> np.ndarray:
  """A photo-like RGB picture: smooth shading, edges and fine texture (what antialiasing meets)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width] / max(width, height)
  shading = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y - 3 * x), np.sin(9 * x * y)], -1)
  blobs = (np.hypot(x - 0.4, y - 0.3) < 0.2)[..., None] * np.array([0.8, -0.5, 0.3])
  texture = rng.normal(0, 0.15, (height, width, 3))
  return np.clip(127.5 + 90 * (shading + blobs + texture), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("photos")
  paths = []
  for i, (width, height) in enumerate(PHOTO_SIZES):
    path = root / "val" / "all" / f"{i}_{width}x{height}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_photo(width, height, i)).save(path, quality=92)
    paths.append(str(path))
  return root, paths


def test_eval_framing_gives_torchvision_resize_256_center_crop_224(photo_folder):
  torchvision = import_torchvision()
  from torchvision.transforms import v2
  root, paths = photo_folder
  reference = v2.Compose([v2.Resize(256), v2.CenterCrop(224)])
  source = sources.FolderSource(str(root), "val")
  # The streamed eval path itself: reduced decode, resize, centre crop.
  batch, = streaming.eval_batches(source, global_batch_size=len(paths), image_size=224,
                                  crop_fraction=0.875)
  del torchvision
  for row, path in enumerate(source.paths):
    with Image.open(path) as picture:
      expected = np.asarray(reference(picture.convert("RGB")), np.int16)
    ours = batch["image"][row].astype(np.int16)
    assert ours.shape == expected.shape == (224, 224, 3)
    difference = np.abs(ours - expected)
    # Seen: identical pixels (max 0) for every size: the same Pillow resize on the same
    # decoded picture. The bound leaves room for one rounding step of another Pillow.
    assert difference.max() <= 1 and difference.mean() < 0.01, (path, difference.max())


def test_random_resized_box_follows_torchvision_statistics():
  import_torchvision()
  import torch
  from torchvision import transforms
  height, width, draws = 300, 400, 4000
  rng = np.random.default_rng(0)
  ours = np.array([images.random_resized_box(height, width, rng) for _ in range(draws)])
  torch.manual_seed(0)
  picture = torch.zeros(3, height, width)
  theirs = np.array([transforms.RandomResizedCrop.get_params(picture, (0.08, 1.0), (3 / 4, 4 / 3))
                     for _ in range(draws)])  # (top, left, h, w), as ours.

  def statistics(boxes):
    top, left, h, w = boxes.T.astype(np.float64)
    return {"area": h * w / (height * width), "log_ratio": np.log(w / h),
            "centre_y": (top + h / 2) / height, "centre_x": (left + w / 2) / width}

  for name, a in statistics(ours).items():
    b = statistics(theirs)[name]
    values = np.sort(np.concatenate([a, b]))
    ks = np.abs(np.searchsorted(np.sort(a), values, "right") / draws
                - np.searchsorted(np.sort(b), values, "right") / draws).max()
    # Two samples of 4000 from one distribution: KS above 0.036 has p < 0.01.
    assert ks < 0.036, (name, ks)
    np.testing.assert_allclose(np.quantile(a, [0.1, 0.5, 0.9]), np.quantile(b, [0.1, 0.5, 0.9]),
                               atol=0.04, err_msg=name)


def test_random_resized_crop_lands_where_its_box_says():
  torchvision = import_torchvision()
  from torchvision.transforms import functional
  del torchvision
  # Non-square, every pixel saying where it is: rows in red, columns in green.
  y, x = np.mgrid[0:60, 0:90]
  picture = np.stack([4 * y, 2 * x, np.full_like(x, 128)], -1).astype(np.uint8)
  for seed in range(5):
    box = images.random_resized_box(60, 90, np.random.default_rng(seed), (0.2, 0.5), (1.5, 2.5))
    top, left, h, w = box
    assert w > h  # Wide crops: a swapped height and width would show.
    crop = images.random_resized_crop(picture, 24, np.random.default_rng(seed), (0.2, 0.5),
                                      (1.5, 2.5))
    expected = np.asarray(functional.resized_crop(Image.fromarray(picture), top, left, h, w,
                                                  [24, 24]), np.int16)
    # Seen: identical inside, at most 1 on the border rows and columns, where ours reads the
    # pixels just outside the box (a box resize) and torchvision's crop-then-resize cannot.
    difference = np.abs(crop.astype(np.int16) - expected)
    assert difference[1:-1, 1:-1].max() == 0 and difference.max() <= 2, (seed, difference.max())


def test_pad_crop_is_a_shift_with_zeros():
  padding = 4
  batch = np.random.default_rng(0).integers(1, 256, (64, 10, 12, 3)).astype(np.float32)

  def shifted(image, dy, dx):
    """The reference: the picture moved by (dy, dx), zeros where it left."""
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    out[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = \
        image[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    return out

  cropped = np.asarray(augment.random_crop_flip(jax.random.key(1), batch, padding, flip=False))
  seen = set()
  for image, out in zip(batch, cropped):
    matches = [(dy, dx) for dy in range(-padding, padding + 1)
               for dx in range(-padding, padding + 1)
               if np.array_equal(out, shifted(image, dy, dx))]
    assert len(matches) == 1, matches
    seen.add(matches[0])
  assert len(seen) > 20  # Shifts drawn over the whole range, not one.


def test_reduced_decode_keeps_the_smallest_crop_at_full_resolution():
  class Source:
    def __len__(self):
      return 16

  example = streaming._TrainExample(Source(), global_batch_size=4, local_batch_size=4,
                                    process_index=0, image_size=224, train_crop="random_resized",
                                    crop_scale=(0.08, 1.0), seed=0)
  side = example.max_side
  # torchvision's smallest crop of a side x side picture: area 0.08, aspect 3/4 (or 4/3).
  area = side * side * 0.08
  narrow = min(round(math.sqrt(area * 3 / 4)), round(math.sqrt(area / (4 / 3))))
  assert narrow >= 224, (side, narrow)
  assert side <= 1.01 * 224 / math.sqrt(0.08 * 3 / 4) + 1  # And no larger than needed.


def test_simplejpeg_decode_gives_pillows_pixels_and_steps_aside_for_what_it_cannot_do(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (300, 460, 3), np.uint8)
  plain = str(tmp_path / "plain.jpg")
  Image.fromarray(pixels).save(plain, quality=90)
  for min_side in (0, 40, 70, 150, 299, 1000):
    ours = images.decode_rgb_jpeg(plain, min_side)
    with images.open_image(plain, min_side) as image:
      pillow = images.to_mode_array(image)
    assert ours is not None and ours.shape == pillow.shape, (min_side, ours, pillow.shape)
    np.testing.assert_array_equal(ours, pillow)
    assert min(ours.shape[:2]) >= min(min_side, 300)
  assert images.decode_rgb_jpeg(plain, 70).shape[0] < 300  # Reduced, as Pillow's draft.
  rotated = str(tmp_path / "rotated.jpg")
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(pixels).save(rotated, exif=exif)
  grey = str(tmp_path / "grey.jpg")
  Image.fromarray(pixels[..., 0]).save(grey)
  png = str(tmp_path / "picture.png")
  Image.fromarray(pixels).save(png)
  for path in (rotated, grey, png):  # Pillow's path handles these (rotation, grey to RGB).
    assert images.decode_rgb_jpeg(path) is None, path


def test_jpeg_orientation_reads_what_pillow_reads(tmp_path):
  """The header parse that lets colour JPEGs skip Pillow agrees with Pillow's getexif on
  every orientation, either byte order, other tags, and no EXIF; an XMP packet (which
  Pillow also reads) or a malformed block leaves the file to Pillow."""
  from PIL import Image
  pixels = np.random.default_rng(1).integers(0, 256, (40, 60, 3), np.uint8)
  cases = {}
  for orientation in range(1, 9):
    exif = Image.Exif()
    exif[0x0110] = "camera"  # A tag before it: the parse must walk the IFD.
    exif[0x0112] = orientation
    cases[f"o{orientation}"] = {"exif": exif}
  big_endian = (b"Exif\0\0MM\x00\x2a\x00\x00\x00\x08\x00\x01"
                b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x03\x00\x00\x00\x00\x00\x00")
  cases["big_endian"] = {"exif": big_endian}
  no_orientation = Image.Exif()
  no_orientation[0x0110] = "camera"
  cases["other_tags"] = {"exif": no_orientation}
  cases["none"] = {}
  for name, options in cases.items():
    path = tmp_path / f"{name}.jpg"
    Image.fromarray(pixels).save(path, **options)
    with Image.open(path) as image:
      expected = image.getexif().get(0x0112, 1)
    assert images.jpeg_orientation(path.read_bytes()) == expected, name
    decoded = images.decode_rgb_jpeg(str(path))
    assert (decoded is not None) == (expected == 1), name
    if decoded is not None:
      with images.open_image(str(path)) as image:
        np.testing.assert_array_equal(decoded, images.to_mode_array(image))
  assert {images.jpeg_orientation((tmp_path / f"o{k}.jpg").read_bytes()) for k in range(1, 9)} \
      == set(range(1, 9))
  xmp = tmp_path / "xmp.jpg"
  Image.fromarray(pixels).save(xmp, xmp=b"<x:xmpmeta><tiff:Orientation>6</tiff:Orientation>"
                                          b"</x:xmpmeta>")
  with Image.open(xmp) as image:
    assert image.getexif().get(0x0112) == 6  # Pillow rotates it by its XMP alone.
  assert images.jpeg_orientation(xmp.read_bytes()) is None
  assert images.decode_rgb_jpeg(str(xmp)) is None
  broken = bytearray((tmp_path / "o6.jpg").read_bytes())
  at = broken.index(b"Exif\0\0") + 6
  broken[at:at + 2] = b"XX"  # Neither byte order.
  assert images.jpeg_orientation(bytes(broken)) is None
