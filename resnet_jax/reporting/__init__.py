"""What a run tells its user: metrics files, TensorBoard, the progress bar, summaries, plots.

metrics_buffer.py: step metrics kept on device until a log line.
metrics_file.py: metrics.jsonl (written, its torn last line repaired, read back) and the
  writer that mirrors it to TensorBoard.  tensorboard.py: the event files.
timing.py: the run's clock (saved with each checkpoint), time to accuracy.
summary.py: the end-of-run table.  progress_bar.py: the console bar.  plots.py: PNG figures.

May import `errors` only.
"""
