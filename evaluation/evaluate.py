"""Score a finished run on new data, with per-example predictions for error analysis.

    python -m evaluation.evaluate --run RUN_DIR --data FILE [--out results.json]

Loads the base checkpoint plus the run's adapter, reads FILE in any format the trainer accepts,
and writes the metrics (results.json) and predictions.jsonl beside it: one line per example with
the input reference, label, prediction and score (the predicted class's probability; for causal
LM the block's perplexity).
"""

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional

from finetune.errors import UserError
from finetune.rundir import RunDirectory


def _labelled_table(data_file: str, run: RunDirectory, info: dict):
    """The data with columns resolved from the run's config and labels mapped to the run's ids."""
    from finetune.config import TrainConfig
    from finetune.data.columns import Columns, guess_columns
    from finetune.data.loading import Unpacking, check_images, label_name, load_table

    cfg = TrainConfig.from_dict(run.read_config())
    table = load_table(data_file, "--data", Unpacking.from_config(cfg))
    given = Columns(
        *(c if c in table.column_names else None for c in (cfg.text_column, cfg.label_column, cfg.image_column))
    )
    columns = guess_columns(table, info["task"], given, "--data")
    if columns.image:
        table = check_images(table, columns.image, data_file, "--data")
    if columns.label:
        feature = table.features[columns.label]
        names = feature.names if hasattr(feature, "names") else None
        values = [str(names[v]) if names else label_name(v) for v in table[columns.label]]
        unknown = sorted(set(values) - set(info["label2id"]))
        if unknown:
            raise UserError(
                f"--data: labels {unknown[:10]} in column {columns.label!r} were not seen in training; "
                f"the run knows {list(info['label2id'])}"
            )
        table = table.remove_columns(columns.label).add_column(columns.label, [info["label2id"][v] for v in values])
    return cfg, table, columns


def _references(table, columns) -> list[str]:
    from datasets import Image

    if columns.image:
        return [
            item["path"] or f"row {i}"
            for i, item in enumerate(table.cast_column(columns.image, Image(decode=False))[columns.image])
        ]
    return [str(text)[:200] for text in table[columns.text]]


def evaluate_run(run_dir: str | Path, data_file: str, batch_size: int = 16) -> tuple[dict, list[dict]]:
    """(metrics, per-example predictions) of the run's fine-tuned model on ``data_file``, scored by the trainer's
    own evaluation path (finetune.training.engine.predict) on the accelerator: the GPU when there is one."""
    from accelerate import Accelerator
    from datasets import DatasetDict
    from torch.utils.data import DataLoader

    from finetune.config import TrainConfig
    from finetune.inference import load_trained
    from finetune.tasks import get_task
    from finetune.training import engine, speed

    run = RunDirectory(run_dir)
    model, processor, info = load_trained(run.path)
    task = get_task(info["task"])
    cfg, table, columns = _labelled_table(data_file, run, info)
    fixed = TrainConfig.from_dict(
        {**cfg.to_dict(), "block_size": info.get("block_size"), "max_seq_length": info.get("max_seq_length")}
    )
    encoded, _ = task.encode(fixed, DatasetDict(train=table), columns, processor, model)
    # The precision training evaluated in, so scores here match the run's own.
    precision = speed.resolve_mixed_precision(cfg.mixed_precision, speed.uses_cuda(), speed.model_width(model.config))
    accelerator = Accelerator(mixed_precision=precision)
    # In file order (no length sorting): predictions line up with the references.
    loader = DataLoader(encoded["train"], batch_size=batch_size, collate_fn=task.collate_fn(processor))
    model, loader = accelerator.prepare(model, loader)
    gathered = engine.predict(model, loader, accelerator, task)
    metrics = task.compute_metrics(gathered, len(info["labels"]) if info.get("labels") else None)
    if "losses" in gathered:  # per-token losses: blocks of text, scored by their perplexity
        decoded = [processor.decode(ids[:64]) for ids in encoded["train"]["input_ids"]]
        return metrics, _block_predictions(gathered, decoded)
    return metrics, _class_predictions(gathered, _references(table, columns), info["labels"])


def _class_predictions(gathered: dict, references: list[str], labels: list[str]) -> list[dict]:
    return [
        {"input": ref, "label": labels[int(y)], "prediction": labels[int(p)], "score": float(s)}
        for ref, y, p, s in zip(references, gathered["references"], gathered["predictions"], gathered["scores"])
    ]


def _block_predictions(gathered: dict, decoded: list[str]) -> list[dict]:
    rows = []
    for index, (losses, targets) in enumerate(zip(gathered["losses"], gathered["references"])):
        mean = float(losses[targets != -100].mean())
        rows.append({"input": decoded[index], "label": None, "prediction": None, "score": math.exp(mean), "loss": mean})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run directory")
    parser.add_argument("--data", required=True, help="data file or folder, in a format the trainer accepts")
    parser.add_argument("--out", default="results.json", help="metrics JSON; predictions.jsonl is written beside it")
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args(argv)
    try:
        metrics, predictions = evaluate_run(args.run, args.data, args.batch_size)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": str(args.run), "data": str(args.data), "metrics": metrics}, indent=2))
    with (out.parent / "predictions.jsonl").open("w") as f:
        f.writelines(json.dumps(row) + "\n" for row in predictions)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
