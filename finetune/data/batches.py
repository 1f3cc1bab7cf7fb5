"""The recipe's data loaders: training batches of similar text lengths, evaluation longest first."""

from typing import Optional

import torch
from torch.utils.data import DataLoader

from finetune.config import TrainConfig
from finetune.training import speed


def dataloaders(
    cfg: TrainConfig, data, collate, accelerator, images: bool
) -> tuple[DataLoader, DataLoader, Optional[DataLoader]]:
    """Training batches of similar text lengths (little padding), shuffled by (seed, epoch); evaluation (and test,
    None without a test split) longest first; on a GPU pinned memory and, for images, decoding in worker
    processes."""
    cuda = accelerator.device.type == "cuda"
    workers = cfg.dataloader_num_workers
    if workers is None:
        workers = speed.image_workers(cuda, accelerator.num_processes) if images else 0
    common = {"collate_fn": collate, "num_workers": workers, "pin_memory": cuda, "persistent_workers": workers > 0}
    train, evaluation = data["train"], data["validation"]
    if cfg.group_by_length and "length" in train.column_names:
        # Grouped by the batch of all processes together, which accelerate then splits: N processes see the batches
        # one process would.
        global_batch = cfg.per_device_train_batch_size * accelerator.num_processes
        order = {"sampler": speed.EpochLengthGroupedSampler(global_batch, train["length"], cfg.seed)}
    else:
        order = {"shuffle": True}
    # Own generators: a DataLoader without one draws its seed from the global RNG at every pass, which would
    # shift dropout masks after a resume.
    train_dl = DataLoader(
        train,
        batch_size=cfg.per_device_train_batch_size,
        **order,
        **common,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    test = data["test"] if "test" in data else None
    return (
        train_dl,
        eval_dataloader(evaluation, cfg.per_device_eval_batch_size, common, cfg.seed),
        None if test is None else eval_dataloader(test, cfg.per_device_eval_batch_size, common, cfg.seed),
    )


def eval_dataloader(dataset, batch_size: int, common: dict, seed: int = 0) -> DataLoader:
    """Longest examples first when lengths are known: the first batch shows the peak memory, the rest pad less."""
    order = speed.longest_first(dataset["length"]) if "length" in dataset.column_names else None
    return DataLoader(
        dataset, batch_size=batch_size, sampler=order, **common, generator=torch.Generator().manual_seed(seed)
    )
