"""Running a trained model without gradients: exact evaluation and prediction.

eval_steps.py: the compiled eval step over padded, masked batches.
evaluator.py: one Evaluator for the training loop and `--mode=eval`.
prediction.py: classifying image files and arrays with a checkpoint.

May import `data`, `models`, `checkpoints`, `config`, `sharding` and `errors`.
"""
