"""Export a finished run: the adapter on its own, or a merged model that loads with plain from_pretrained.

    python -m finetune.export RUN_DIR --merged OUT    # adapter folded into the base weights (merge_and_unload)
    python -m finetune.export RUN_DIR --adapter OUT   # the PEFT adapter, loadable with PeftModel.from_pretrained

Both folders hold the tokenizer or image processor and a filled model card (README.md). OUT must be a new or
empty folder: an export never overwrites anything.
"""

import argparse
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from finetune.errors import UserError
from finetune.rundir import FINISHED, RunDirectory, read_json, write_json_atomic


def check_destination(out: str | Path) -> Path:
    """``out`` resolved, when it is a new or empty folder; a UserError otherwise."""
    path = Path(out).expanduser().resolve()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"export: {path} exists and is not an empty folder; choose a new folder for the export")
    return path


def export_merged(run_dir: str | Path, out: str | Path) -> Path:
    """The run's model with the adapter merged into the base weights, saved with its processor and model card.

    A fully fine-tuned run is saved as it is. Heads and BatchNorm statistics trained in full (PEFT's
    modules_to_save) replace the base model's own in the merged weights.
    """
    from finetune.export.model_card import model_card
    from finetune.inference import load_trained

    run = _finished(run_dir)
    destination = check_destination(out)
    model, processor, info = load_trained(run.path)
    if info["finetune_method"] != "full":
        model = model.merge_and_unload()
    with _staging(destination) as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        model_card(run.path, merged=True).save(folder / "README.md")
    return destination


def export_adapter(run_dir: str | Path, out: str | Path) -> Path:
    """The adapter folder with a model card, naming the base model by hub id or folder name (never a local path)."""
    from finetune.export.model_card import model_card, portable_base

    run = _finished(run_dir)
    destination = check_destination(out)
    with _staging(destination) as folder:
        shutil.copytree(run.adapter_dir, folder, dirs_exist_ok=True)
        peft_config = run.adapter_dir / "adapter_config.json"  # PEFT's own file
        for source, info, key in (
            (peft_config, read_json(peft_config), "base_model_name_or_path"),
            (run.adapter_info_path, run.read_adapter_info(), "base_model"),
        ):
            if info:
                write_json_atomic(folder / source.name, {**info, key: portable_base(info.get(key))})
        model_card(run.path, merged=False).save(folder / "README.md")
    return destination


@contextmanager
def _staging(destination: Path):
    """A temporary folder beside ``destination`` that becomes it only once the export is whole."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}."))
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if destination.exists():
        destination.rmdir()  # checked empty before the export started
    folder.chmod(0o755)  # mkdtemp's folder is private (0700); an export is an ordinary folder
    folder.rename(destination)


def _finished(run_dir: str | Path) -> RunDirectory:
    run = RunDirectory(run_dir)
    if run.state != FINISHED or not run.adapter_dir.is_dir():
        raise UserError(f"export: {run.path} is not a finished run with a trained model; only finished runs export")
    return run


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory of a finished run")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--merged", metavar="OUT", help="write the merged model (base + adapter) to this new folder")
    target.add_argument("--adapter", metavar="OUT", help="write the adapter with its model card to this new folder")
    args = parser.parse_args(argv)
    try:
        path = export_merged(args.run, args.merged) if args.merged else export_adapter(args.run, args.adapter)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0
