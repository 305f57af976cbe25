"""scripts/export_benchmark.py end to end on a tiny run: every file exported, measured, tabled."""

import importlib.util
import os

import pytest

from tests.evaluation.test_deployment import folder_run

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "export_benchmark.py")


@pytest.mark.slow
def test_the_benchmark_measures_each_file_and_the_checkpoint(tmp_path, capsys):
  for module in ("torch", "onnx", "onnxscript", "onnxruntime", "ai_edge_litert"):
    pytest.importorskip(module, reason=f"the benchmark exports with {module}")
  spec = importlib.util.spec_from_file_location("export_benchmark", SCRIPT)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  workdir = folder_run(tmp_path)
  report = script.main([f"--workdir={workdir}", f"--out_dir={tmp_path / 'out'}",
                        "--calibration_images=8", "--calls=2", "--warmup=1"])
  labels = [r["artifact"] for r in report["results"]]
  assert labels == ["JAX checkpoint (predict)"] + [a[0] for a in script.ARTIFACTS]
  accuracies = {r["artifact"]: r["accuracy"] for r in report["results"]}
  # float32 files classify the 12 test pictures as the checkpoint does.
  for label in ("ONNX fp32", "LiteRT fp32", "StableHLO fp32"):
    assert accuracies[label] == accuracies["JAX checkpoint (predict)"]
  assert all(r["count"] == 12 and r["ms_batch_32"] > 0 for r in report["results"])
  assert "| ONNX int8 |" in capsys.readouterr().out
