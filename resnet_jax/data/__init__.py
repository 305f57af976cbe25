"""From a dataset on disk to batches on the device, in the order the data flows.

sources.py: every dataset (a TFDS dataset, an image folder or a CSV) as a random-access source.
csv_labels.py: a CSV of picture paths and labels, read, checked and cut into splits.
holdout.py: an eval split carved out of the training pictures (stratified, deterministic).
balance.py: imbalanced classes: class counts, inverse-frequency weights, class-balanced epochs.
tfds_source.py: TFDS preparation (download or manual_dir, ArrayRecord) and TfdsSource.
images.py: one picture decoded, framed for eval and predict, or random-resized-cropped.
memory.py: a source decoded whole, once, cached as .npz, held on every device.
streaming.py: a source streamed in threads (Grain) or worker processes, one process's rows of each batch.
examples.py: one row of a stream to one example, the work the worker processes run.
workers.py: persistent worker processes, forked from a light forkserver, making whole batches in order.
pipeline.py: which of the two a run uses, and the per-step input of each.
augment.py: crops, flips, normalisation and mixing, on device inside the compiled step.

May import `sharding` and `errors`; sources (with csv_labels and holdout), tfds_source, images,
examples (with balance) and workers import no JAX or Grain, so that worker processes start fast.
"""
