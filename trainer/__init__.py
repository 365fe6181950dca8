"""The trainer: ``python -m trainer`` fits the deep network on MNIST and writes the model file.

Modules: ``data`` (MNIST files, download, splits, batches), ``loop`` (fit, evaluate,
checkpoints), ``schedule`` (learning-rate schedules), ``augment`` (numpy data augmentation),
``report`` (progress, metrics log, final report, plots), ``__main__`` (the command line).
"""
