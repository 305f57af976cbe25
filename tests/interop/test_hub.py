"""Published weights by name: a cache the tests fill, hashes, failed downloads, fine-tuning."""

import hashlib
import json
import os
import urllib.error

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from resnet_jax.checkpoints.restore import load_variables
from resnet_jax.config import configuration
from resnet_jax.errors import UserError
from resnet_jax.interop import hub
from resnet_jax.models import zoo
from tests.conftest import (assert_same_logits, import_torch, import_torchvision,
                            randomize_torch_model, tiny_config)
from tests.interop.test_convert import _as_torch_layout, _tiny_variables


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """An empty cache, and a download that fails loudly if anything tries the network."""
  monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))

  def no_network(url, destination):
    raise AssertionError(f"tried to download {url}")
  monkeypatch.setattr(hub, "_download", no_network)
  return tmp_path / "cache"


def _files(root) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root)
                for f in names)


def test_the_table_is_torchvisions_own():
  models = import_torchvision().models
  for model, weights in zoo.TORCHVISION_WEIGHTS.items():
    enum = models.get_model_weights(model)
    assert next(iter(weights)) == enum.DEFAULT.name, model
    for member, file_name in weights.items():
      assert zoo.torchvision_url(file_name) == enum[member].url, (model, member)


def _torchvision_resnet18(tmp_path, monkeypatch, cache, prefix_ok=True):
  """A random torchvision resnet18 saved in the cache under a name carrying its hash prefix."""
  torch = import_torch()
  net = import_torchvision().models.resnet18(num_classes=1000)
  randomize_torch_model(net, seed=0)
  saved = tmp_path / "weights.pth"
  torch.save(net.state_dict(), saved)
  digest = hashlib.sha256(saved.read_bytes()).hexdigest()[:8]
  prefix = digest if prefix_ok else f"{int(digest, 16) ^ 1:08x}"
  file_name = f"resnet18-{prefix}.pth"
  monkeypatch.setitem(zoo.TORCHVISION_WEIGHTS, "resnet18", {"IMAGENET1K_V1": file_name})
  return net, saved, cache / "torchvision" / file_name


def test_cached_torchvision_weights_convert_once_and_give_torchvisions_logits(
    tmp_path, monkeypatch, cache):
  torch = import_torch()
  net, saved, cached = _torchvision_resnet18(tmp_path, monkeypatch, cache)
  os.makedirs(cached.parent)
  os.replace(saved, cached)
  workdir = hub.resolve("torchvision:resnet18")
  assert workdir.startswith(str(cache / "converted"))
  variables, config, _ = load_variables(workdir)
  assert (config["model"], config["stem"], config["num_classes"]) == ("resnet18", "imagenet", 1000)
  assert len(config["class_names"]) == 1000 and config["class_names"][0] == "tench"
  assert config["input_shape"] == [224, 224, 3]
  images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  assert_same_logits(expected, jax.device_get(variables), "resnet18", 1000, "imagenet", 64,
                     images)
  # Converted once: the second call reads the cache and converts nothing.
  monkeypatch.setattr(hub, "convert_named", lambda *a: pytest.fail("converted twice"))
  assert hub.resolve("torchvision:resnet18") == workdir
  assert not [f for f in os.listdir(cache / "converted") if f.startswith(".")]


def test_a_download_is_verified_and_a_wrong_hash_leaves_nothing(tmp_path, monkeypatch, cache):
  _, saved, cached = _torchvision_resnet18(tmp_path, monkeypatch, cache, prefix_ok=False)
  monkeypatch.setattr(hub, "_download", lambda url, dest: open(dest, "wb").write(
      saved.read_bytes()))
  with pytest.raises(UserError) as info:
    hub.resolve("torchvision:resnet18")
  assert "\n" not in str(info.value) and "SHA-256" in str(info.value)
  assert str(cached) in str(info.value)
  assert _files(cache) == []
  # The same file, put in the cache by hand, is refused too (and left for the user to delete).
  os.makedirs(cached.parent, exist_ok=True)  # An empty folder is all the failure left.
  cached.write_bytes(saved.read_bytes())
  with pytest.raises(UserError, match="SHA-256 .* delete it"):
    hub.resolve("torchvision:resnet18")
  assert not (cache / "converted").exists() or _files(cache / "converted") == []


def test_a_good_download_is_kept(tmp_path, monkeypatch, cache):
  _, saved, cached = _torchvision_resnet18(tmp_path, monkeypatch, cache)
  monkeypatch.setattr(hub, "_download", lambda url, dest: open(dest, "wb").write(
      saved.read_bytes()))
  hub.weights_file("torchvision:resnet18")
  assert cached.read_bytes() == saved.read_bytes()
  assert _files(cache) == [os.path.relpath(cached, cache)]


@pytest.mark.parametrize("how", ["offline", "half"])
def test_a_failed_download_names_the_url_and_the_place_and_leaves_nothing(cache, monkeypatch,
                                                                           how):
  def download(url, destination):
    if how == "half":
      open(destination, "wb").write(b"PK\x03\x04 half a file")
      raise ConnectionResetError("connection reset by peer")
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
  monkeypatch.setattr(hub, "_download", download)
  with pytest.raises(UserError) as info:
    hub.resolve("torchvision:resnet50")
  message = str(info.value)
  assert "\n" not in message
  assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
  assert str(cache / "torchvision" / "resnet50-11ad3fa6.pth") in message
  assert _files(cache) == []


def test_unknown_names_list_the_known_ones(cache):
  with pytest.raises(UserError, match="torchvision:resnet50.IMAGENET1K_V1.*torchvision:"
                                      "wide_resnet101_2"):
    hub.resolve("torchvision:resnet51")
  with pytest.raises(UserError, match="hf-hub:ORG/NAME"):
    hub.resolve("hf-hub:resnet50")
  assert hub.resolve("runs/a_path") == "runs/a_path"


# The Hugging Face hub, with huggingface_hub's download replaced.


def _tiny_timm_files(folder, num_classes=5):
  from safetensors.numpy import save_file
  variables = _tiny_variables(num_classes)
  state_dict = {k: np.ascontiguousarray(v) for k, v in _as_torch_layout(variables).items()}
  os.makedirs(folder, exist_ok=True)
  save_file(state_dict, os.path.join(folder, "model.safetensors"))
  config = {"architecture": "resnet_tiny", "num_classes": num_classes,
            "label_names": [f"kind_{i}" for i in range(num_classes)],
            "pretrained_cfg": {"input_size": [3, 16, 16], "mean": [0.4, 0.5, 0.6],
                               "std": [0.2, 0.25, 0.3], "num_classes": num_classes}}
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config, f)
  return variables


def _fake_hub(monkeypatch, source_folder, fail=None):
  import huggingface_hub
  from huggingface_hub import errors
  calls = []

  def hf_hub_download(repo_id, filename, *, local_dir, **kwargs):
    calls.append((repo_id, filename))
    if fail == "missing":  # As huggingface_hub raises it for a 404 on the repository.
      import httpx2
      url = f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
      raise errors.RepositoryNotFoundError(
          f"404 Client Error: Repository Not Found for url: {url}",
          response=httpx2.Response(404, request=httpx2.Request("GET", url)))
    target = os.path.join(local_dir, filename)
    data = open(os.path.join(source_folder, filename), "rb").read()
    if fail == "lost":  # What huggingface_hub raises when its requests fail (offline).
      raise errors.LocalEntryNotFoundError("cannot find the requested files in the local cache")
    if fail == "half" and filename == "model.safetensors":
      open(target, "wb").write(data[:len(data) // 2])
      raise ConnectionResetError("connection reset by peer")
    open(target, "wb").write(data)
    return target
  monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
  monkeypatch.setattr(hub, "_hub_unreachable", lambda *args, **kwargs: None)
  return calls


def test_hf_hub_weights_bring_their_normalisation_and_classes(tmp_path, monkeypatch, cache):
  variables = _tiny_timm_files(tmp_path / "published")
  calls = _fake_hub(monkeypatch, tmp_path / "published")
  workdir = hub.resolve("hf-hub:someone/tiny.test")
  assert sorted(f for _, f in calls) == ["config.json", "model.safetensors"]
  loaded, config, _ = load_variables(workdir)
  assert config["mean"] == [0.4, 0.5, 0.6] and config["std"] == [0.2, 0.25, 0.3]
  assert config["class_names"] == [f"kind_{i}" for i in range(5)]
  assert config["input_shape"] == [16, 16, 3] and config["model"] == "resnet_tiny"
  np.testing.assert_array_equal(np.asarray(loaded["params"]["layer1_0"]["conv1"]["kernel"]),
                                variables["params"]["layer1_0"]["conv1"]["kernel"])
  assert _files(cache / "hf-hub") == ["someone--tiny.test/config.json",
                                      "someone--tiny.test/model.safetensors"]


@pytest.mark.parametrize("fail, expected", [
    ("missing", "does not exist on the Hugging Face hub"),
    ("half", "cannot download https://huggingface.co/someone/tiny.test/resolve/main/"
             "model.safetensors"),
    # A lost connection is no missing file (LocalEntryNotFoundError is an EntryNotFoundError).
    ("lost", "cannot download https://huggingface.co/someone/tiny.test/resolve/main/")])
def test_hf_hub_failures_are_one_line_and_leave_nothing(tmp_path, monkeypatch, cache, fail,
                                                         expected):
  _tiny_timm_files(tmp_path / "published")
  _fake_hub(monkeypatch, tmp_path / "published", fail=fail)
  with pytest.raises(UserError) as info:
    hub.resolve("hf-hub:someone/tiny.test")
  assert "\n" not in str(info.value) and expected in str(info.value)
  assert _files(cache) == []


@pytest.mark.parametrize("endpoint, offline, reason", [
    ("http://127.0.0.1:9", False, "127.0.0.1:9"),  # The discard port: nothing listens.
    ("https://huggingface.co", True, "HF_HUB_OFFLINE is set")])
def test_hf_hub_unreachable_fails_at_once_naming_the_files_to_fetch(
    tmp_path, monkeypatch, cache, endpoint, offline, reason):
  import huggingface_hub
  from huggingface_hub import constants
  monkeypatch.setattr(constants, "ENDPOINT", endpoint)
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
  calls = []  # huggingface_hub's own download retries for about 25 s before it gives up.
  monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(a))
  with pytest.raises(UserError) as info:
    hub.resolve("hf-hub:someone/tiny.test")
  message = str(info.value)
  assert "\n" not in message and "cannot reach the Hugging Face hub" in message
  assert reason in message and calls == []
  folder = os.path.join(str(cache), "hf-hub", "someone--tiny.test")
  for name in ("model.safetensors", "config.json"):
    assert f"{endpoint}/someone/tiny.test/resolve/main/{name}" in message
  assert message.endswith(f"put them in {folder}")
  assert _files(cache) == []


def test_init_checkpoint_by_name_starts_fine_tuning(tmp_path, monkeypatch, cache):
  from resnet_jax.train import trainer
  variables = _tiny_timm_files(cache / "hf-hub" / "someone--tiny.test")  # Cached: no download.
  config = tiny_config(init_checkpoint="hf-hub:someone/tiny.test", width=8,
                       data_dir=str(tmp_path / "data"))
  configuration.validate(config)
  with tfds.testing.mock_data(num_examples=32):
    run = trainer.Trainer(config, str(tmp_path / "finetune"), quiet=True)
  try:
    np.testing.assert_array_equal(np.asarray(run.state.params["layer2_0"]["conv2"]["kernel"]),
                                  variables["params"]["layer2_0"]["conv2"]["kernel"])
    assert run.state.params["fc"]["kernel"].shape[-1] == 10  # Head re-initialised for mock CIFAR.
  finally:
    run.close()


@pytest.mark.slow
def test_convert_export_and_predict_take_the_same_names(tmp_path, cache):
  import subprocess
  import sys
  from PIL import Image
  from tests.conftest import REPO
  _tiny_timm_files(cache / "hf-hub" / "someone--tiny.test")  # Cached: no download.
  env = {**os.environ, hub.CACHE_ENV: str(cache)}

  def run(module, *args):
    result = subprocess.run([sys.executable, "-m", f"resnet_jax.{module}", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout

  assert "wrote resnet_tiny" in run("convert", "--torch_checkpoint=hf-hub:someone/tiny.test",
                                    f"--output={tmp_path / 'converted'}")
  _, config, _ = load_variables(str(tmp_path / "converted"))
  assert config["class_names"] == [f"kind_{i}" for i in range(5)]
  run("export", "--workdir=hf-hub:someone/tiny.test", f"--output={tmp_path / 'w.safetensors'}")
  assert (tmp_path / "w.safetensors").stat().st_size > 0
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "black.png")
  assert "kind_" in run("predict", "--workdir=hf-hub:someone/tiny.test",
                        str(tmp_path / "black.png"))


def test_a_cache_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
  (tmp_path / "a_file").write_text("")
  monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "a_file" / "cache"))
  with pytest.raises(UserError, match="cannot write the cache .* set RESNET_JAX_CACHE"):
    hub.resolve("torchvision:resnet18")
