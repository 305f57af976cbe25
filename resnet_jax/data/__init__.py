"""From a dataset on disk to batches on the device, in the order the data flows.

sources.py: every dataset (a TFDS dataset or an image folder) as a random-access source.
memory.py: a source decoded whole, once, cached as .npz, held on every device.
streaming.py: a source streamed through Grain workers, one process's rows of each batch.
pipeline.py: which of the two a run uses, and the per-step input of each.
augment.py: crops, flips, normalisation and mixing, on device inside the compiled step.

May import `sharding` and `errors`; sources.py and streaming.py import no JAX,
so that Grain's worker processes start fast.
"""
