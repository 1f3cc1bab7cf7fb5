"""Hyperparameter search (``python -m finetune.sweep``): the grid and its checks (grid.py), the experiment record
(experiment.py) and the driver that trains one run per point (driver.py)."""
