"""What a run tells its user: metrics files, TensorBoard, the progress bar, summaries, plots.

metric_log.py: metrics.jsonl and TensorBoard, reading them back, the run's summary.
timing.py: time to accuracy.  progress_bar.py: the console bar.  plots.py: PNG figures.

May import `errors` only.
"""
