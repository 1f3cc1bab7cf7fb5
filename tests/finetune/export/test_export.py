"""Exports through the real command line: a merged model that predicts as base + adapter did, an adapter folder
with a filled model card, and the refusals that keep anything already there safe."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import OFFLINE_ENV, REPO, read_json, run_cli, write_image_folder, write_lm_text, write_sentiment_csv

EXPORT = (sys.executable, "-m", "finetune.export")
# Random-init tiny models need larger steps than the defaults; fp32 so the comparison is exact to 1e-4.
ARGS = ["--max_steps", "4", "--learning_rate", "2e-3", "--head_learning_rate", "1e-2", "--mixed_precision", "no"]


@pytest.fixture(scope="module")
def finished(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    data = {
        "gpt2": write_lm_text(root / "lm.txt", lines=120),
        "bert": write_sentiment_csv(root / "reviews.csv", rows=60),
        "resnet": write_image_folder(root / "images", per_class=8),
    }
    runs = {}
    for family, train_file in data.items():
        out = root / f"{family}-run"
        result = run_cli(
            "--model_name_or_path",
            str(tiny_checkpoints[family]),
            "--train_file",
            str(train_file),
            "--output_dir",
            str(out),
            *ARGS,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        runs[family] = out
    return runs


def export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EXPORT, *args], cwd=REPO, env=OFFLINE_ENV, capture_output=True, text=True, timeout=300)


def sample_batch(run: Path, model, processor) -> dict:
    """A few real examples of the run's own validation split, as model inputs."""
    from finetune.config import TrainConfig
    from finetune.tasks import get_task

    cfg = TrainConfig.from_yaml(run / "config.yaml")
    info = read_json(run / "adapter" / "lora_lab.json")
    task = get_task(info["task"])
    raw, columns, _ = task.load_data(cfg)
    fixed = TrainConfig.from_dict(
        {**cfg.to_dict(), "block_size": info.get("block_size"), "max_seq_length": info.get("max_seq_length")}
    )
    data, _ = task.encode(fixed, raw, columns, processor, model)
    batch = task.collate_fn(processor)([data["validation"][i] for i in range(min(4, len(data["validation"])))])
    batch.pop("labels", None)
    return batch


@pytest.mark.parametrize("family", ["gpt2", "bert", "resnet"])
def test_merged_model_predicts_as_base_plus_adapter(finished, family, tmp_path):
    """merge_and_unload folds LoRA (and the fully trained head / BatchNorm statistics) into plain weights."""
    import transformers

    from finetune.inference import load_trained
    from finetune.task_kinds import TASKS

    run = finished[family]
    result = export(str(run), "--merged", str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr[-2000:]
    adapted, processor, info = load_trained(run)
    auto = getattr(transformers, TASKS[info["task"]].auto_class)
    merged = auto.from_pretrained(tmp_path / "merged").eval()  # plain transformers: no PEFT involved
    assert not any("lora" in name for name, _ in merged.named_parameters())
    batch = sample_batch(run, adapted, processor)
    with torch.no_grad():
        expected, got = adapted(**batch).logits, merged(**batch).logits
    assert expected.shape == got.shape and expected.numel() > 0
    assert torch.allclose(expected, got, atol=1e-4), (expected - got).abs().max()
    names = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= names
    assert (tmp_path / "merged").stat().st_mode & 0o777 == 0o755, "an ordinary folder, not a private temporary one"


@pytest.fixture(scope="module")
def exported_adapter(finished, tmp_path_factory):
    """(the bert run, its adapter exported once with the command line, the export's model card)."""
    from huggingface_hub import ModelCard

    run, out = finished["bert"], tmp_path_factory.mktemp("adapter-export") / "adapter"
    result = export(str(run), "--adapter", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return run, out, ModelCard.load(out / "README.md")


def test_adapter_export_reloads_and_carries_a_filled_model_card(exported_adapter):
    from peft import PeftModel

    from finetune.tasks import get_task

    run, out, card = exported_adapter
    # The base was a local folder: no hub id to name (a folder called "bert" is not the hub's bert).
    assert card.data.base_model is None and card.data.library_name == "peft"
    assert card.data.pipeline_tag == "text-classification"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert set(results) >= {"accuracy", "eval_loss"}
    assert results["accuracy"] == read_json(run / "metrics.json")["finetuned"]["accuracy"]
    assert str(run) not in card.content and "[More Information Needed]" not in card.content
    assert read_json(out / "adapter_config.json")["base_model_name_or_path"] == "bert"
    task = get_task("text-classification")
    processor = task.load_processor(str(out))
    base_path = read_json(run / "adapter" / "lora_lab.json")["base_model"]  # the tiny checkpoint on this machine
    base, _ = task.load_model(base_path, ["negative", "positive"], processor)
    assert PeftModel.from_pretrained(base, out) is not None


@pytest.mark.parametrize(
    "expected",
    [
        "## Evaluation",
        "| accuracy |",
        "Trained on `reviews.csv` for 4 optimizer steps",
        "2 classes: negative, positive",
        "num_labels=2",
        "lora_r: 16",
        "How sure the change is",
        "(95% bootstrap)",
        "## Reproducibility",
    ],
)
def test_the_exported_model_card_states(exported_adapter, expected):
    _, _, card = exported_adapter
    assert expected in card.content, expected


def test_export_refuses_a_used_destination_and_an_unfinished_run(finished, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    result = export(str(finished["bert"]), "--merged", str(used))
    assert result.returncode == 2 and "not an empty folder" in result.stderr
    assert [p.name for p in used.iterdir()] == ["keep.txt"], "nothing already there is touched"
    result = export(str(tmp_path), "--adapter", str(tmp_path / "out"))
    assert result.returncode == 2 and "not a finished run" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_model_cards_code_runs_as_the_card_says(exported_adapter):
    """The card's "Use" code, with its two placeholders filled in as the card tells the reader: it loads the base
    model and the adapter, and the result scores a text as the run's own model does."""
    import re

    import torch

    run, out, card = exported_adapter
    [code] = re.findall(r"```python\n(.*?)```", card.content, flags=re.S)
    assert 'BASE = "<path to bert>"' in code, code
    base_path = read_json(run / "adapter" / "lora_lab.json")["base_model"]
    filled = code.replace("<path to bert>", base_path).replace("<this repo or folder>", str(out))
    namespace: dict = {}
    exec(filled, namespace)  # noqa: S102 - the card's own code, as a reader would run it
    model = namespace["model"].eval()
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(out)(["the film was great"], return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (1, 2)
