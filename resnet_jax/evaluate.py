"""`--mode=eval`: evaluate a workdir's best checkpoint on the eval split."""

import os

import jax
import ml_collections
import optax
from absl import logging

from resnet_jax import checkpointing, configuration, input_pipeline, train, trainer
from resnet_jax.errors import UserError

# Fields an eval run may take from the command line; the rest come from the run.
DATA_FIELDS = ("data_dir", "manual_dir", "eval_split", "eval_batch_size")


def eval_config(workdir: str, requested: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  """The workdir's saved config, with data locations from the command line."""
  saved = configuration.read_saved(workdir)
  if saved is None:
    if requested is None:
      raise UserError(f"{workdir} has no config.json: pass the --config the run was trained "
                      "with, or a workdir written by resnet_jax")
    return requested
  config = configuration.from_json(saved)
  if requested is not None:
    configuration.check_same_architecture(saved, requested, workdir)
    for field in DATA_FIELDS:
      if requested[field]:
        config[field] = requested[field]
  return config


def evaluate(workdir: str, requested: ml_collections.ConfigDict | None = None) -> dict:
  """Restores the best checkpoint (latest where none is marked), evaluates, writes eval.json."""
  workdir = os.path.abspath(workdir)
  directory = checkpointing.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise UserError(f"{workdir} has no checkpoints: train first (same command without "
                    "--mode=eval), or pass the workdir of a trained run")
  config = eval_config(workdir, requested)
  checkpointer = checkpointing.Checkpointer(directory, read_only=True)
  best = checkpointer.best_step()
  if best is None:
    raise UserError(f"{directory} holds no checkpoint: train first, or pass another --workdir")
  restored = checkpointer.restore_newest_intact(steps=[s for s in checkpointer.steps() if s <= best])
  if restored is None:
    raise UserError(f"no checkpoint up to step {best} in {directory} can be read: "
                    "evaluate another workdir, or retrain")
  step, state_dict = restored
  if step != best:
    logging.warning("the best checkpoint (step %d) is damaged; evaluating step %d instead", best, step)

  split, meta = input_pipeline.load_split(config.dataset, config.eval_split, config.data_dir,
                                          config.manual_dir)
  num_classes = config.num_classes or meta["num_classes"]
  mesh = train.create_mesh()
  model = train.create_model(config, num_classes)
  state = train.TrainState.create(
      apply_fn=model.apply, tx=optax.identity(),
      params=jax.device_put(state_dict["params"], train.replicated(mesh)),
      batch_stats=jax.device_put(state_dict.get("batch_stats", {}), train.replicated(mesh)))
  batch_size = config.eval_batch_size or config.batch_size
  images, labels, mask = input_pipeline.pad_for_eval(split, batch_size)
  data = {k: train.put_replicated(v, mesh) for k, v in
          (("image", images), ("label", labels), ("mask", mask))}
  # A trained run saved its training-set statistics; otherwise use the eval split's.
  mean, std = ((config.mean, config.std) if config.mean
               else input_pipeline.channel_stats(split.images))
  evaluate_fn = train.compile_evaluate(config, mesh, num_classes, mean, std, batch_size)
  metrics = train.summarize_eval(jax.device_get(evaluate_fn(state, data)))
  result = {"step": step, "checkpoint": os.path.join(directory, str(step)),
            "eval_split": config.eval_split, **metrics,
            "class_names": list(config.get("class_names") or meta["class_names"])}
  if jax.process_index() == 0:
    trainer.write_json(os.path.join(workdir, "eval.json"), result)
    print(format_eval(result))
  checkpointer.close()
  return result


def format_eval(result: dict) -> str:
  names = result["class_names"] or [str(i) for i in range(len(result["per_class_accuracy"]))]
  lines = [f"checkpoint {result['checkpoint']} (step {result['step']}) on {result['eval_split']}: "
           f"accuracy {100 * result['eval_accuracy']:.2f}% over {result['eval_count']} examples, "
           f"loss {result['eval_loss']:.4f}"]
  width = max(len(n) for n in names)
  lines += [f"  {name:<{width}}  {100 * acc:6.2f}%"
            for name, acc in zip(names, result["per_class_accuracy"])]
  return "\n".join(lines)
