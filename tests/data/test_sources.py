"""Random-access sources: image folders (every Pillow mode to RGB, bad input) and TFDS."""

import os
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from resnet_jax.data import images, sources, tfds_source
from resnet_jax.errors import UserError
from tests.conftest import write_image_folder



def test_folder_lists_sorted_classes_and_only_images(tmp_path):
  names = write_image_folder(tmp_path, per_class=5)
  source = sources.FolderSource(str(tmp_path), "train")
  assert source.class_names == ["cat", "dog house", "zebra"] == names
  assert len(source) == 15 and len(source.paths) == 15
  np.testing.assert_array_equal(source.labels, np.repeat(np.arange(3, dtype=np.int32), 5))
  assert source.labels.dtype == np.int32
  for path, label in zip(source.paths, source.labels):
    assert os.path.basename(os.path.dirname(path.replace(os.sep + "more", ""))) == names[label]
    assert "/." not in path and not path.endswith(".txt")
  assert source.paths[:5] == sorted(source.paths[:5])  # Deterministic order inside a class.
  assert sources.open_split(f"folder:{tmp_path}", "train").paths == source.paths


def test_folder_images_decode_to_rgb_uint8(tmp_path):
  write_image_folder(tmp_path, per_class=6)
  source = sources.FolderSource(str(tmp_path), "train")
  sizes = set()
  for i in range(len(source)):
    example = source[i]
    image = example["image"]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    assert example["label"].dtype == np.int32
    with Image.open(source.paths[i]) as original:
      assert image.shape[:2] == (original.height, original.width)
    sizes.add(image.shape)
  assert len(sizes) > 1
  assert source.image_shape() is None


def _save(path, image, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, **kwargs)
  return path


def test_every_mode_converts_to_rgb_and_exif_orientation_applies(tmp_path):
  root = tmp_path / "train" / "a"
  grey16 = Image.fromarray(np.full((4, 6), 257 * 100, np.uint16))  # Mode I;16.
  palette = Image.new("P", (5, 5), 1)
  palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotated 90 degrees clockwise: the picture is 8 high, 12 wide as stored.
  paths = {
      "grey16": _save(str(root / "a.png"), grey16),
      "palette": _save(str(root / "b.png"), palette, transparency=0),
      "cmyk": _save(str(root / "c.jpg"), Image.new("CMYK", (4, 4), (0, 255, 255, 0))),
      "rotated": _save(str(root / "d.jpg"), Image.new("RGB", (12, 8)), exif=exif),
      "rgba": _save(str(root / "e.png"), Image.new("RGBA", (3, 3), (10, 200, 30, 0))),
  }
  source = sources.FolderSource(str(tmp_path), "train")
  images = {name: source[source.paths.index(path)]["image"] for name, path in paths.items()}
  assert (images["grey16"] == 100).all()  # Scaled from 16 bits, not clipped to white.
  assert (images["palette"] == [10, 20, 30]).all()
  assert images["cmyk"].shape == (4, 4, 3) and images["cmyk"][..., 0].min() > 200  # Red.
  assert images["rotated"].shape == (12, 8, 3)
  assert (images["rgba"] == [10, 200, 30]).all()
  assert all(image.dtype == np.uint8 and image.shape[-1] == 3 for image in images.values())


def test_image_shape_reads_headers_of_uniform_folder(tmp_path):
  write_image_folder(tmp_path, per_class=3, size=12)
  source = sources.FolderSource(str(tmp_path), "train")
  assert source.image_shape() == (12, 12, 3)
  assert source.image_shape(sample=2) == (12, 12, 3)
  _save(str(tmp_path / "train" / "cat" / "wide.png"), Image.new("RGB", (20, 12)))
  assert sources.FolderSource(str(tmp_path), "train").image_shape() is None


def test_large_jpeg_decodes_reduced_with_max_side(tmp_path):
  path = _save(str(tmp_path / "train" / "a" / "big.jpg"), Image.new("RGB", (400, 300), "red"))
  source = sources.FolderSource(str(tmp_path), "train")
  assert source[0]["image"].shape == (300, 400, 3)
  # 1/4 scale keeps the shorter side (75) >= 64; 1/8 would not.
  assert source.read(0, max_side=64)["image"].shape == (75, 100, 3)
  assert sources.load_image(path, max_side=200).shape == (300, 400, 3)  # 1/2 would give 150.


def test_corrupt_image_names_the_file(tmp_path):
  write_image_folder(tmp_path, per_class=2)
  bad = tmp_path / "train" / "cat" / "broken.jpg"
  bad.write_bytes(b"\xff\xd8 not really a jpeg")
  source = sources.FolderSource(str(tmp_path), "train")
  with pytest.raises(UserError, match=r"cannot decode .*broken\.jpg .*remove or replace it"):
    source[source.paths.index(str(bad))]


def test_folder_bad_input_errors(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    sources.FolderSource(str(tmp_path / "nowhere"), "train")
  write_image_folder(tmp_path, per_class=1)
  with pytest.raises(UserError, match=r"split folder .*validation does not exist.*train_split"):
    sources.FolderSource(str(tmp_path), "validation")
  os.makedirs(tmp_path / "empty_split")
  (tmp_path / "empty_split" / "loose.jpg").write_bytes(b"")
  with pytest.raises(UserError, match="has no class folders"):
    sources.FolderSource(str(tmp_path), "empty_split")
  os.makedirs(tmp_path / "train" / "empty class")
  (tmp_path / "train" / "empty class" / "readme.txt").write_text("no images here")
  with pytest.raises(UserError, match=r"class folder .*empty class holds no images"):
    sources.FolderSource(str(tmp_path), "train")


def test_resize_center_crop():
  image = np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3)
  square = image[:, :8].copy()
  assert images.resize_center_crop(square, 8) is square  # Nothing to do.
  np.testing.assert_array_equal(images.resize_center_crop(image, 8), image[:, 2:10])
  np.testing.assert_array_equal(images.resize_center_crop(image, 4, 0.5), image[2:6, 4:8])
  resized = images.resize_center_crop(image, 4)  # Shorter side 8 -> 4, then 4 x 4.
  assert resized.shape == (4, 4, 3) and resized.dtype == np.uint8
  grey = np.full((10, 20, 1), 77, np.uint8)
  out = images.resize_center_crop(grey, 6, crop_fraction=0.875)
  assert out.shape == (6, 6, 1) and (out == 77).all()


def test_random_resized_crop():
  image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
  crop = lambda seed: images.random_resized_crop(image, 16, np.random.default_rng(seed))
  assert crop(1).shape == (16, 16, 3) and crop(1).dtype == np.uint8
  np.testing.assert_array_equal(crop(1), crop(1))
  assert not np.array_equal(crop(1), crop(2))
  # No box of the whole area fits a 10 x 40 image at aspect 1: the centre fallback.
  wide = np.repeat(np.arange(40, dtype=np.uint8)[None, :, None], 10, axis=0)
  fallback = images.random_resized_crop(wide, 10, np.random.default_rng(0), scale=(1, 1),
                                         ratio=(1, 1))
  np.testing.assert_array_equal(fallback, wide[:, 15:25])


def test_tfds_source_on_mock_cifar10(tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    source = sources.open_split("cifar10", "train", data_dir=str(tmp_path))
    assert isinstance(source, sources.TfdsSource)
    assert len(source) == 12 and source.num_classes == 10 and len(source.class_names) == 10
    assert source.image_shape() == (32, 32, 3)
    labels = []
    for i in range(len(source)):
      example = source[i]
      assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.uint8
      assert example["label"].dtype == np.int32 and 0 <= example["label"] < 10
      labels.append(example["label"])
    np.testing.assert_array_equal(source.labels, labels)
    copy = pickle.loads(pickle.dumps(source))  # What a Grain worker receives.
    np.testing.assert_array_equal(copy[3]["image"], source[3]["image"])


def test_tfds_source_errors(tmp_path, monkeypatch):
  # A source prepares its dataset first; offline and without manual_dir it cannot.
  monkeypatch.setattr(tfds_source, "_network_reachable", lambda *a, **k: False)
  with pytest.raises(UserError, match=r"cifar10.* is not prepared in .*manual_dir"):
    sources.TfdsSource("cifar10", "train", data_dir=str(tmp_path))
  with pytest.raises(UserError, match="unknown dataset"):
    sources.TfdsSource("no_such_dataset_xyz", "train", data_dir=str(tmp_path))


class StreamingTestImages(tfds.core.GeneratorBasedBuilder):
  """Twelve 8x8 grey images in three classes, prepared as TFRecord by the test."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 1)),
        "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(12):
      yield i, {"image": np.full((8, 8, 1), 10 * i, np.uint8), "label": i % 3}


def test_tfds_tfrecord_converts_to_array_record_once(tmp_path):
  StreamingTestImages(data_dir=str(tmp_path), file_format="tfrecord").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  source = sources.TfdsSource("streaming_test_images", "train", data_dir=str(tmp_path))
  version_dir = tmp_path / "streaming_test_images" / "1.0.0"
  assert any("array_record" in name for name in os.listdir(version_dir))
  assert len(source) == 12 and source.class_names == ["a", "b", "c"]
  assert source.image_shape() == (8, 8, 1)
  values = sorted(int(source[i]["image"][0, 0, 0]) for i in range(12))
  assert values == [10 * i for i in range(12)]
  assert source[0]["image"].shape == (8, 8, 1)
  np.testing.assert_array_equal(np.sort(source.labels), np.repeat(np.arange(3), 4))
  # Converted once: a second open reads the ArrayRecord files as they are.
  stamp = {n: os.path.getmtime(version_dir / n) for n in os.listdir(version_dir)}
  again = sources.TfdsSource("streaming_test_images", "train[:6]", data_dir=str(tmp_path))
  assert len(again) == 6
  assert stamp == {n: os.path.getmtime(version_dir / n) for n in os.listdir(version_dir)}
