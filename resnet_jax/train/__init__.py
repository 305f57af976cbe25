"""Training: the compiled step and the host loop around it.

steps.py: optimiser, schedule, initial state, the compiled train step.
losses.py: the training loss: label cross-entropy and knowledge distillation, composed once.
teacher.py: a distillation run's frozen teacher: read, checked, shown the student's pictures.
trainer.py: set-up, restore, the loop, evaluation, checkpoints, the summary.
signals.py: SIGTERM/SIGINT as a request to save and stop.
xla_cpu.py, profiling.py: CPU compiler options, a profiler trace.

May import every package but `cli`.
"""
