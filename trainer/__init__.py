"""The trainer: ``python -m trainer`` fits a network on MNIST (or Fashion-MNIST) and writes the
model file.

Modules: ``cli`` (flags -> a Job) and ``config`` (TrainConfig, Job, Paths); ``run`` (one run:
data, model, fit, test, outputs); ``loop`` (fit with callbacks, train_epoch, evaluate);
``callbacks`` (early stopping, checkpoints, metrics log); ``checkpoints``; ``factory`` (model,
optimizer, schedule from a config); ``data`` (IDX files, download, splits, batches);
``schedule`` (learning-rate schedules); ``augment`` (numpy data augmentation); ``report``
(progress, metrics log, final report, plots); ``__main__`` (exit statuses).
"""
