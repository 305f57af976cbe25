"""Running a trained model: exact evaluation, prediction, backbone features and explanations.

eval_steps.py: the compiled eval step over padded, masked batches.
evaluator.py: one Evaluator for the training loop and `--mode=eval`.
scores.py: precision, recall, F1, balanced accuracy and calibration error from the sums.
prediction.py: classifying image files and arrays with a checkpoint.
features.py: the stage outputs (strides 4 to 32) of a checkpoint's network.
explain.py: Grad-CAM heat maps of the top class over each picture.
deployment.py: a checkpoint as one function of framed pictures to logits, the contract written
  beside exported files, int8 calibration pictures, and an exported file's eval metrics.

May import `data`, `models`, `checkpoints`, `config`, `sharding` and `errors`.
"""
