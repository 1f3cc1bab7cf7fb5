"""The model card (README.md) that goes with every export and push: huggingface_hub's ModelCard, filled in.

Its metadata names the base model (as a hub id when it came from the hub, else by folder name: never a path on
the training machine), the pipeline tag and the evaluation results; its text summarises the data, compares the
base model with the fine-tuned one on the same held-out split and lists the settings.
"""

from pathlib import Path
from typing import Any, Optional

import yaml

from finetune.rundir import RunDirectory, read_json
from finetune.task_kinds import TASKS
from finetune.training.intervals import card_lines
from finetune.training.reproducibility import DATA_FIELDS, LIBRARIES, short

# Settings that say where files were on the training machine, not how the model was trained.
LOCAL_ONLY = ("output_dir", "train_file", "validation_file", "test_file", "resume_from_checkpoint", "data_cache_dir")

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

## Data

{{ data }}

## Evaluation (same held-out split, before and after training)

| metric | base model | fine-tuned |
| --- | --- | --- |
{% for name, base, tuned in rows -%}
| {{ name }} | {{ base }} | {{ tuned }} |
{% endfor %}
{{ selection }}
{% if uncertainty %}
How sure the change is (fine-tuned minus base, with its 95% bootstrap interval over the held-out examples):

{% for line in uncertainty -%}
- {{ line }}
{% endfor %}
{% endif %}
## Use

```python
{{ usage }}
```

## Training settings

```yaml
{{ settings }}
```

## Reproducibility

{{ reproducibility }}
"""


# Beside an uploaded data file (or its unpacked folder), the web app records the name its user gave it.
DATA_NAME_FILE = "name.json"


def data_name(train_file: Optional[str]) -> str:
    """The training data as its user knows it: the uploaded file's own name, else the file or folder name."""
    path = Path(str(train_file or "data"))
    given = read_json(path.parent / DATA_NAME_FILE) or {}
    return str(given.get("name") or path.name)


def portable_base(name: Optional[str]) -> Optional[str]:
    """A hub id as it is; a local folder by its name only (its path means nothing on another machine)."""
    return Path(name).name if isinstance(name, str) and Path(name).is_absolute() else name


def is_local(name: Optional[str]) -> bool:
    """Whether the base model was a folder of the training machine rather than a hub id."""
    return isinstance(name, str) and Path(name).is_absolute()


def model_card(run_dir: str | Path, merged: bool) -> Any:
    """A filled huggingface_hub ModelCard for the run's adapter (``merged=False``) or merged model."""
    from huggingface_hub import ModelCard

    run = RunDirectory(run_dir)
    config, metrics, info = run.read_config(), run.read_metrics(), run.read_adapter_info()
    task = metrics.get("task") or config.get("task") or info.get("task")
    trained_on = config.get("model_name_or_path") or info.get("base_model")
    base, local = portable_base(trained_on), is_local(trained_on)
    tuned = {k: v for k, v in (metrics.get("finetuned") or {}).items() if isinstance(v, (int, float))}
    card_data = _card_data(
        run.path.name, task, None if local else base, tuned, data_name(config.get("train_file")), merged
    )
    base_metrics = metrics.get("base") or {}
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        title=run.path.name,
        summary=_summary(config, task, base, merged),
        data=_data_summary(config, metrics, info),
        rows=[(name, _fmt(base_metrics.get(name)), _fmt(value)) for name, value in tuned.items()],
        selection=_selection(metrics),
        uncertainty=card_lines(metrics),
        usage=_usage(task, base, local, merged, len(info.get("labels") or [])),
        settings=yaml.safe_dump(_settings(config, base), sort_keys=False).strip(),
        reproducibility=_reproducibility(run.read_reproducibility(), config),
    )


def _card_data(name: str, task: Optional[str], base: Optional[str], tuned: dict, data_name: str, merged: bool):
    """The card's metadata: base model, library, pipeline tag, tags and the fine-tuned scores as eval results."""
    from huggingface_hub import EvalResult, ModelCardData

    kind = TASKS.get(task)
    results = [
        EvalResult(
            task_type=kind.pipeline_tag if kind else "other",
            dataset_type="custom",
            dataset_name=data_name,
            metric_type=metric,
            metric_value=value,
        )
        for metric, value in tuned.items()
    ]
    return ModelCardData(
        base_model=base,
        library_name="transformers" if merged else "peft",
        pipeline_tag=kind.pipeline_tag if kind else None,
        model_name=name,
        tags=["lora", "lora-lab", *([task] if task else [])],
        eval_results=results or None,
    )


def _summary(config: dict, task: Optional[str], base: Optional[str], merged: bool) -> str:
    method = config.get("finetune_method", "lora")
    what = (
        "the adapter merged into the base weights"
        if merged and method != "full"
        else ("the full model" if method == "full" else "a PEFT adapter")
    )
    return f"A {method} fine-tune of `{base}` for {task or 'an unrecorded task'}, trained with LoRA Lab: {what}."


def _data_summary(config: dict, metrics: dict, info: dict) -> str:
    labels = info.get("labels")
    parts = [
        f"Trained on `{data_name(config.get('train_file'))}` for {metrics.get('steps')} optimizer "
        f"steps (batch {config.get('per_device_train_batch_size')} per device x "
        f"{metrics.get('num_processes', 1)} process(es))."
    ]
    if labels:
        parts.append(f"{len(labels)} classes: {', '.join(map(str, labels))}.")
    return " ".join(parts)


def _selection(metrics: dict) -> str:
    return (
        f"The weights are those of step {metrics.get('adapter_step', metrics.get('steps'))} of "
        f"{metrics.get('steps')} (best eval loss {_fmt(metrics.get('best_eval_loss'))} at step "
        f"{metrics.get('best_step')}); {_fmt(metrics.get('trainable_percent'))}% of the parameters trained."
    )


def _usage(task: Optional[str], base: Optional[str], local: bool, merged: bool, num_labels: int) -> str:
    """Code that loads the model. A base that was a local folder cannot be named for another machine: the code holds
    a placeholder to replace with where that folder (or the same checkpoint) is."""
    auto = TASKS[task].auto_class if task in TASKS else "AutoModel"
    if merged:
        return f'from transformers import {auto}\n\nmodel = {auto}.from_pretrained("<this repo or folder>")'
    # A new classification head has the run's number of classes, not the checkpoint's.
    head = f", num_labels={num_labels}, ignore_mismatched_sizes=True" if num_labels else ""
    where = (
        f'BASE = "<path to {base}>"  # the base model was the local folder "{base}": its path on your machine\n'
        if local
        else f'BASE = "{base}"\n'
    )
    return (
        f"from peft import PeftModel\nfrom transformers import {auto}\n\n{where}"
        f"base_model = {auto}.from_pretrained(BASE{head})\n"
        'model = PeftModel.from_pretrained(base_model, "<this repo or folder>")'
    )


def _settings(config: dict, base: Optional[str]) -> dict:
    shared = {k: v for k, v in config.items() if k not in LOCAL_ONLY}
    shared["model_name_or_path"] = base  # a local folder's name, never its path on the training machine
    return shared


def _reproducibility(record: dict, config: dict) -> str:
    """The run's reproducibility record in short: versions, device, data SHA-256 (first 12 digits, data named as in
    the Data section, never by path), the commit, and the command that trains the run again and compares."""
    command = (
        "`python -m finetune.reproduce RUN --output_dir NEW` trains `RUN/config.yaml` again and compares the results."
    )
    if not record:
        return f"No reproducibility record (the run predates `reproducibility.json`). {command}"
    versions = record.get("versions") or {}
    device = record.get("device") or {}
    data = record.get("data") or {}
    git = record.get("git") or {}
    hashes = [
        f"{field} `{data_name(config.get(field))}` `{short(data[field].get('sha256'))}`"
        for field in DATA_FIELDS
        if isinstance(data.get(field), dict)
    ]
    commit = f"`{short(git.get('commit'))}`" + (" with uncommitted changes" if git.get("dirty") else "")
    lines = [
        "- Versions: " + ", ".join(f"{name} {versions.get(name)}" for name in ("python", *LIBRARIES)),
        f"- Device: {device.get('gpu_name') or device.get('device')}, precision {device.get('mixed_precision')}, "
        f"{device.get('num_processes')} process(es)",
        "- Data SHA-256: " + ("; ".join(hashes) or "none recorded"),
        f"- Code: LoRA Lab commit {commit if git.get('commit') else 'unknown (not a git checkout)'}",
        f"- Reproduce: {command}",
    ]
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
