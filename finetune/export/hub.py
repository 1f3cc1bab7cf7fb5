"""Publish a finished run's adapter to the Hugging Face Hub, with a generated model card.

    HF_TOKEN=... python -m finetune.export.hub RUN_DIR --repo_id you/my-adapter [--private]

The card (README.md) states the base model, a summary of the training data, base vs fine-tuned metrics
and the training config. The token is read from the environment (HF_TOKEN) and handed to
huggingface_hub only: it is never written to the run directory, a log, or the card.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

from finetune.errors import UserError
from finetune.rundir import FINISHED, RunDirectory


def model_card(run_dir: str | Path) -> str:
    """README.md for the adapter repository of a finished run (finetune.export.model_card fills it)."""
    from finetune.export.model_card import model_card as filled_card

    return str(filled_card(_finished(run_dir).path, merged=False))


def _finished(run_dir: str | Path) -> RunDirectory:
    run = RunDirectory(run_dir)
    if run.state != FINISHED or not run.adapter_dir.is_dir():
        raise UserError(f"push: {run.path} is not a finished run with an adapter; only finished runs can be pushed")
    return run


def push_to_hub(
    run_dir: str | Path, repo_id: str, private: bool = True, token: Optional[str] = None, update_existing: bool = False
) -> str:
    """Upload the adapter folder plus README.md to ``repo_id``; returns the repository URL.

    An existing repository is only written to with ``update_existing``: a typo must not overwrite a model.
    """
    from huggingface_hub import HfApi

    from finetune.export.local import export_adapter

    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise UserError("push: no Hugging Face token; set HF_TOKEN in the environment (a Space secret on Spaces)")

    run = _finished(run_dir)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging:  # the card goes beside a copy of the adapter, not into the run
        folder = export_adapter(run.path, Path(staging) / "adapter")
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
