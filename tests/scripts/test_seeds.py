"""scripts/seeds.py: the command per seed and the aggregate row (the runs themselves are the
real command, tested in test_main.py)."""

import os

import pytest

from tests.conftest import REPO
from tests.scripts.test_benchmark import load_script

seeds = load_script(os.path.join(REPO, "scripts", "seeds.py"))


def test_each_seed_runs_the_real_command_in_its_own_workdir():
  args, extra = seeds.parse_args(["--config=configs/tiny.py", "--workdir=runs/s", "--seeds=2",
                                  "--config.width=8", "--config.num_train_steps=300"])
  assert (args.seeds, extra) == (2, ["--config.width=8", "--config.num_train_steps=300"])
  command = seeds.command_for_seed(args.config, 7, args.workdir, extra)
  assert command[1:] == ["-m", "resnet_jax.main", "--config=configs/tiny.py", "--config.seed=7",
                         f"--workdir={os.path.join('runs/s', 'seed_7')}", "--quiet",
                         "--config.width=8", "--config.num_train_steps=300"]
  with pytest.raises(SystemExit):
    seeds.parse_args(["--config=c.py", "--workdir=w", "--widht=8"])


def test_the_aggregate_row_gives_mean_std_min_max():
  runs = [{"final_eval_accuracy": a, "train_time_s": t, "wall_time_s": t + 10, "targets": [0.9],
           "time_to": {0.9: (t / 2, 100)} if a >= 0.9 else {}}
          for a, t in ((0.90, 60.0), (0.92, 80.0), (0.88, 70.0))]
  stats = seeds.aggregate(runs)
  assert stats["final_eval_accuracy"]["mean"] == pytest.approx(0.90)
  assert stats["final_eval_accuracy"]["std"] == pytest.approx(0.02)
  assert (stats["train_time_s"]["min"], stats["train_time_s"]["max"]) == (60.0, 80.0)
  assert stats["time_to_0.9"]["n"] == 2 and stats["time_to_0.9"]["mean"] == pytest.approx(35.0)
  row = seeds.markdown_row("fashion_mnist", "tiny", stats, "2-core CPU", "python scripts/seeds.py",
                           num_runs=3)
  assert row.startswith("| fashion_mnist | tiny | 90.00% ± 2.00 (min 88.00, max 92.00; n=3) | ")
  assert "to 90%: 35.0s" in row and "2/3 runs" in row
  assert row.endswith("| 2-core CPU | `python scripts/seeds.py` |")
