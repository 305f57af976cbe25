"""Eval and predict frame a picture the same way, and converted ImageNet weights evaluate the
standard way (shorter side 256, centre 224) as torchvision's own model code does."""

import json
import math

import jax
import numpy as np
import pytest
from PIL import Image

from resnet_jax.evaluation import evaluator, prediction
from resnet_jax.interop import convert
from resnet_jax.models import resnet
from tests.conftest import import_torchvision, tiny_config
from tests.data.test_images import _photo


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
  """A random resnet_tiny (width 8, 3 classes) written as converted weights at 16x16."""
  model = resnet.create_model("resnet_tiny", 3, "cifar", 8)
  variables = jax.device_get(model.init(jax.random.key(0), np.zeros((1, 16, 16, 3)), train=False))
  rng = np.random.default_rng(0)
  # Weights off their initial values (the head starts at zero: every picture would get 1/3),
  # statistics away from 0/1, so that normalisation and BatchNorm matter.
  variables["params"] = jax.tree.map(lambda x: (x + rng.normal(0, 0.08, x.shape)).astype(
      np.float32), variables["params"])
  variables["batch_stats"] = jax.tree_util.tree_map_with_path(
      lambda path, x: (rng.uniform(0.5, 1.5, x.shape) if path[-1].key == "var"
                       else rng.normal(0, 0.1, x.shape)).astype(np.float32),
      variables["batch_stats"])
  workdir = tmp_path_factory.mktemp("weights") / "run"
  convert.save_converted(dict(variables), str(workdir), "resnet_tiny", "cifar", 8, 3, (16, 16, 3))
  return workdir


def _eval_probability(workdir, root, pipeline: str) -> float:
  """Softmax probability of class 0 that `--mode=eval` gives the folder's only picture."""
  requested = tiny_config(width=8, dataset=f"folder:{root}", train_split="val", eval_split="val",
                          image_size=16, eval_crop_fraction=0.875, input_pipeline=pipeline)
  result = evaluator.evaluate_workdir(str(workdir), requested)
  assert result["eval_count"] == 1
  return math.exp(-result["eval_loss"])  # Loss of one example = -log p(label 0).


def test_predict_gives_the_probabilities_eval_gives(tiny_weights, tmp_path):
  picture = tmp_path / "data" / "val" / "a" / "photo.jpg"
  picture.parent.mkdir(parents=True)
  Image.fromarray(_photo(60, 40, 3)).save(picture, quality=92)
  predictor = prediction.load_predictor(str(tiny_weights))
  predictor.crop_fraction = 0.875  # As --config.eval_crop_fraction=0.875 gives eval.
  predicted = prediction.classify_files(predictor, [str(picture)], top_k=3)[0]["predictions"]
  p0 = next(p["probability"] for p in predicted if p["index"] == 0)
  assert abs(p0 - 1 / 3) > 0.01  # Not uniform: equal probabilities would hide a bug.
  for pipeline in ("stream", "memory"):
    assert abs(_eval_probability(tiny_weights, tmp_path / "data", pipeline) - p0) < 1e-5


def _probabilities(predictor, paths) -> np.ndarray:
  results = prediction.classify_files(predictor, [str(p) for p in paths], top_k=3)
  return np.array([[p["probability"] for p in sorted(r["predictions"], key=lambda p: p["index"])]
                   for r in results])


@pytest.mark.parametrize("extension,tolerance", [(".png", 1e-6), (".jpg", 0.01)])
def test_exif_rotated_picture_predicts_as_the_upright_one(tiny_weights, tmp_path, extension,
                                                          tolerance):
  upright = Image.fromarray(_photo(48, 32, 4))
  # Stored turned a quarter, with the EXIF tag (6: rotate 90 clockwise to view) that undoes it.
  stored = upright.transpose(Image.Transpose.ROTATE_90)
  exif = Image.Exif()
  exif[0x0112] = 6
  options = {"quality": 100, "subsampling": 0} if extension == ".jpg" else {}
  paths = [tmp_path / f"{name}{extension}" for name in ("upright", "rotated", "untagged")]
  upright.save(paths[0], **options)
  stored.save(paths[1], exif=exif, **options)
  stored.save(paths[2], **options)
  probabilities = _probabilities(prediction.load_predictor(str(tiny_weights)), paths)
  # The JPEGs differ by their own compression of the turned pixels; PNGs not at all.
  np.testing.assert_allclose(probabilities[1], probabilities[0], atol=tolerance)
  # Without the tag the picture is seen sideways: the check above can fail.
  assert np.abs(probabilities[2] - probabilities[0]).max() > 5 * tolerance


def test_converted_resnet18_evaluates_as_torchvision_does(tmp_path):
  torchvision = import_torchvision()
  import torch
  from torchvision.transforms import v2
  torch.manual_seed(0)
  net = torchvision.models.resnet18(num_classes=4).eval()
  with torch.no_grad():  # Statistics of their own, so that BatchNorm does something.
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.2, 0.2)
        module.running_var.uniform_(0.5, 1.5)
    # A head that tells pictures apart: random features differ little between them.
    net.fc.weight.mul_(100)
    net.fc.bias.zero_()
  sizes = [(500, 375), (375, 500), (640, 480), (300, 300), (1000, 200), (320, 260), (260, 330),
           (400, 400)]
  reference = v2.Compose([v2.Resize(256), v2.CenterCrop(224), v2.PILToTensor(),
                          v2.ToDtype(torch.float32, scale=True),
                          v2.Normalize(convert.IMAGENET_MEAN, convert.IMAGENET_STD)])
  labels, inputs = [], []
  for i, (width, height) in enumerate(sizes):
    labels.append(i % 4)
    path = tmp_path / "data" / "val" / f"class_{i % 4}" / f"{i}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_photo(width, height, 10 + i)).save(path, quality=92)
    with Image.open(path) as picture:
      inputs.append(reference(picture.convert("RGB")))
  with torch.no_grad():
    logits = net(torch.stack(inputs))
    # Centred over these pictures, so that they get different classes.
    net.fc.bias.copy_(-logits.mean(0))
    predicted = net(torch.stack(inputs)).argmax(1).numpy()
  expected = np.zeros((4, 4), int)  # Confusion matrix: true label (class folder), prediction.
  np.add.at(expected, (np.array(labels), predicted), 1)
  workdir = tmp_path / "converted"
  variables = convert.from_torch_state_dict(net.state_dict())
  convert.save_converted(variables, str(workdir), "resnet18", "imagenet", 64, 4)
  # The documented command: --config.image_size=224 --config.eval_crop_fraction=0.875, streamed.
  requested = tiny_config(dataset=f"folder:{tmp_path / 'data'}", eval_split="val",
                          train_split="val", image_size=224, eval_crop_fraction=0.875,
                          input_pipeline="stream", eval_batch_size=8)
  result = evaluator.evaluate_workdir(str(workdir), requested)
  assert result["confusion_matrix"] == expected.tolist()
  assert len(set(np.nonzero(expected)[1])) > 1  # The pictures get different predictions.
  saved = json.loads((workdir / "eval.json").read_text())
  assert saved["eval_accuracy"] == np.trace(expected) / len(sizes)
