"""Publish a finished run's adapter to the Hugging Face Hub, with a generated model card.

    HF_TOKEN=... python -m finetune.hub RUN_DIR --repo_id you/my-adapter [--private]

The card (README.md) states the base model, a summary of the training data, base vs fine-tuned metrics
and the training config. The token is read from the environment (HF_TOKEN) and handed to
huggingface_hub only: it is never written to the run directory, a log, or the card.
"""

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

import yaml

from finetune.errors import UserError
from finetune.rundir import RunDirectory
from finetune.task_kinds import TASKS

# Settings that say where files were on the training machine, not how the model was trained.
LOCAL_ONLY = ("output_dir", "train_file", "validation_file", "resume_from_checkpoint", "data_cache_dir")


def model_card(run_dir: str | Path) -> str:
    """README.md for the adapter repository of a finished run."""
    run = _finished(run_dir)
    config, metrics = run.read_config(), run.read_metrics()
    task, base = metrics.get("task") or config.get("task"), config["model_name_or_path"]
    base_id = base if not Path(base).is_absolute() else Path(base).name
    rows = [f"| {name} | {_fmt(metrics['base'].get(name))} | {_fmt(value)} |"
            for name, value in metrics.get("finetuned", {}).items() if isinstance(value, (int, float))]
    shared = {k: v for k, v in config.items() if k not in LOCAL_ONLY}
    shared["model_name_or_path"] = base_id  # a local folder's name, never its path on the training machine
    settings = yaml.safe_dump(shared, sort_keys=False)
    pipeline_tag = TASKS[task].pipeline_tag if task in TASKS else None  # a run too old or odd to name its task
    front = yaml.safe_dump({"base_model": base_id, "library_name": "peft", "pipeline_tag": pipeline_tag,
                            "tags": ["lora", "lora-lab", task]}, sort_keys=False)
    return "\n".join([
        "---", front.strip(), "---", "",
        f"# {run.path.name}", "",
        f"A {config.get('finetune_method', 'lora')} fine-tune of `{base_id}` for {task}, trained with LoRA Lab.", "",
        "## Data", "", _data_summary(run, config, metrics), "",
        "## Evaluation (same held-out split, before and after training)", "",
        "| metric | base model | fine-tuned |", "| --- | --- | --- |", *rows, "",
        f"Best eval loss {_fmt(metrics.get('best_eval_loss'))} at step {metrics.get('best_step')} of "
        f"{metrics.get('steps')}; {_fmt(metrics.get('trainable_percent'))}% of the parameters trained.", "",
        "## Use", "", "```python", "from peft import PeftModel",
        f"# load the base model {base_id!r} with transformers, then:",
        "model = PeftModel.from_pretrained(base_model, \"<this repo>\")", "```", "",
        "## Training config", "", "```yaml", settings.strip(), "```", ""])


def _data_summary(run: RunDirectory, config: dict, metrics: dict) -> str:
    labels = run.read_adapter_info().get("labels")
    steps, batch = metrics.get("steps"), config.get("per_device_train_batch_size")
    parts = [f"Trained on `{Path(config['train_file']).name}` for {steps} optimizer steps "
             f"(batch {batch} per device x {metrics.get('num_processes', 1)} process(es))."]
    if labels:
        parts.append(f"{len(labels)} classes: {', '.join(map(str, labels))}.")
    return " ".join(parts)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _finished(run_dir: str | Path) -> RunDirectory:
    run = RunDirectory(run_dir)
    if run.read_status().get("state") != "finished" or not run.adapter_dir.is_dir():
        raise UserError(f"push: {run.path} is not a finished run with an adapter; only finished runs can be pushed")
    return run


def push_to_hub(run_dir: str | Path, repo_id: str, private: bool = True, token: Optional[str] = None,
                update_existing: bool = False) -> str:
    """Upload the adapter folder plus README.md to ``repo_id``; returns the repository URL.

    An existing repository is only written to with ``update_existing``: a typo must not overwrite a model.
    """
    from huggingface_hub import HfApi

    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise UserError("push: no Hugging Face token; set HF_TOKEN in the environment (a Space secret on Spaces)")
    run = _finished(run_dir)
    card = model_card(run.path)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging:  # the card goes beside the adapter, not into the run
        folder = Path(staging) / "adapter"
        shutil.copytree(run.adapter_dir, folder)
        (folder / "README.md").write_text(card)
        try:
            if not update_existing and api.repo_exists(repo_id):
                raise UserError(f"push: {repo_id!r} exists already; choose a new name, or allow updating it")
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=f"LoRA Lab run {run.path.name}")
        except UserError:
            raise
        except Exception as err:  # network, auth, naming: the library's message, never the token
            message = str(err).replace(token, "***")
            raise UserError(f"push: could not upload to {repo_id!r} ({type(err).__name__}: {message})") from None
    return str(url)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory of a finished run")
    parser.add_argument("--repo_id", help="target repository, e.g. you/bert-reviews-lora")
    parser.add_argument("--public", action="store_true", help="make a new repository public (default: private)")
    parser.add_argument("--update", action="store_true", help="allow pushing into an existing repository")
    parser.add_argument("--card", action="store_true", help="print the model card and push nothing")
    args = parser.parse_args(argv)
    try:
        if args.card or not args.repo_id:
            print(model_card(args.run))
        else:
            print(push_to_hub(args.run, args.repo_id, private=not args.public, update_existing=args.update))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
