"""The reference side of benchmarks.vs_trainer: a LoRA fine-tune written the way the transformers and PEFT docs show it.

    python -m benchmarks.reference_trainer --task causal-lm|text-classification|image-classification \\
        --model DIR --train-file F --validation-file F --output-dir DIR --max-steps N --batch-size B \\
        --eval-batch-size B --learning-rate LR --lora-r 8 --lora-alpha 16 --lora-dropout 0.1 \\
        --target-modules c_attn [--max-length L] [--block-size L] [--device cpu|cuda] [--precision no|bf16|fp16]

AutoModelFor..., get_peft_model(LoraConfig(...)), TrainingArguments + Trainer with Trainer's defaults for
everything the benchmark does not fix (no evaluation or logging before step 500, fp32, AdamW as Trainer picks
it), then trainer.train() and trainer.evaluate(). Data as the example scripts prepare it:
  causal-lm            tokenize, join, cut into blocks (run_clm.py's group_texts), default_data_collator
  text-classification  tokenizer(truncation=True, max_length=L) + DataCollatorWithPadding, accuracy
  image-classification imagefolder + with_transform(AutoImageProcessor), default_data_collator, accuracy
Two things follow the LoRA Lab engine so both sides train on the same examples: each text ends with the eos
token before joining (causal LM), and class ids are the label names sorted (text) or the folder order (images).

The last stdout line is ``REFERENCE_RESULT {json}``: train samples/s and runtime from trainer.train()'s metrics,
the eval metrics, non-padding tokens per training example, and peak GPU memory (MiB) on CUDA. For causal LM,
eval_loss is the mean over predicted tokens (see causal_lm_eval_loss; Trainer's own figure is kept beside it).
"""

import argparse
import dataclasses
import json
import math
import time
from itertools import chain

import numpy as np

RESULT_PREFIX = "REFERENCE_RESULT "
MIB = 2**20
# datasets.map's default batch: group_texts joins and cuts within one batch of this many rows, as in run_clm.py.
MAP_BATCH = 1000


def causal_lm_data(args, tokenizer) -> tuple[dict, float]:
    """Blocks of block_size tokens (labels = input ids), and the tokens in one training example."""
    from datasets import load_dataset

    raw = load_dataset("text", data_files={"train": args.train_file, "validation": args.validation_file})
    eos = [tokenizer.eos_token_id]  # a document boundary, as the engine marks it

    def tokenize(batch):
        return {"input_ids": [ids + eos for ids in tokenizer(batch["text"])["input_ids"]]}

    def group_texts(examples):  # run_clm.py's, with the attention mask of ones it would carry
        joined = list(chain(*examples["input_ids"]))
        total = (len(joined) // args.block_size) * args.block_size
        blocks = [joined[i : i + args.block_size] for i in range(0, total, args.block_size)]
        return {
            "input_ids": blocks,
            "attention_mask": [[1] * args.block_size for _ in blocks],
            "labels": [list(b) for b in blocks],
        }

    tokenized = raw.map(tokenize, batched=True, remove_columns=["text"])
    blocks = tokenized.map(group_texts, batched=True, batch_size=MAP_BATCH)
    return blocks, float(args.block_size)  # every token of a block is trained on: no padding


def text_classification_data(args, tokenizer) -> tuple[dict, float, list[str]]:
    """Tokenized texts with label ids (class names sorted), tokens per training example, the class names."""
    from datasets import load_dataset

    raw = load_dataset("csv", data_files={"train": args.train_file, "validation": args.validation_file})
    names = sorted({str(v) for split in raw.values() for v in split["label"]})
    ids = {name: i for i, name in enumerate(names)}

    def preprocess(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=args.max_length)
        encoded["labels"] = [ids[str(v)] for v in batch["label"]]
        return encoded

    data = raw.map(preprocess, batched=True, remove_columns=raw["train"].column_names)
    tokens = float(np.mean([len(ids) for ids in data["train"]["input_ids"]]))
    return data, tokens, names


def image_classification_data(args, processor) -> tuple[dict, list[str]]:
    """Image folders decoded and preprocessed on the fly; class names in the folders' order."""
    from datasets import load_dataset

    data = {
        split: load_dataset("imagefolder", data_dir=path, split="train")
        for split, path in (("train", args.train_file), ("validation", args.validation_file))
    }
    names = data["train"].features["label"].names

    def transform(batch):
        inputs = processor([image.convert("RGB") for image in batch["image"]], return_tensors="pt")
        inputs["labels"] = batch["label"]
        return inputs

    return {split: table.with_transform(transform) for split, table in data.items()}, names


def accuracy(eval_pred) -> dict:
    """Accuracy from logits (what evaluate.load("accuracy") computes, without reaching the hub)."""
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def causal_lm_eval_loss(trainer, reported: float, block_size: int) -> dict:
    """eval_loss per predicted token, and run_clm.py's perplexity from it.

    Trainer divides the summed loss by the count of labels. It knows a causal LM shifts its labels (block_size - 1
    predictions per block) only when the model's ``loss_type`` attribute names ForCausalLMLoss; GPT-2 configs
    leave it unset, so transformers 5.23 divides by block_size and reports eval_loss (block_size - 1) / block_size
    too low. Every block is full here, so the exact mean is the reported one times block_size / (block_size - 1).
    """
    exact = reported if getattr(trainer, "_loss_shifts_labels", True) else reported * block_size / (block_size - 1)
    return {"trainer_eval_loss": reported, "eval_loss": exact, "perplexity": math.exp(min(exact, 700))}


def lora_model(args, model, task_type=None, modules_to_save=None):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.target_modules.split(","),
        modules_to_save=modules_to_save,
        task_type=task_type,
    )
    model = get_peft_model(model, config)
    model.print_trainable_parameters()
    return model


def build(args):
    """(model, train set, eval set, collator, compute_metrics, tokens per training example) for args.task."""
    from transformers import (
        AutoImageProcessor,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        default_data_collator,
    )

    if args.task == "causal-lm":
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        data, tokens = causal_lm_data(args, tokenizer)
        model = lora_model(args, AutoModelForCausalLM.from_pretrained(args.model), task_type="CAUSAL_LM")
        return model, data["train"], data["validation"], default_data_collator, None, tokens
    if args.task == "text-classification":
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        data, tokens, names = text_classification_data(args, tokenizer)
        model = AutoModelForSequenceClassification.from_pretrained(
            args.model,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
        )
        model = lora_model(args, model, task_type="SEQ_CLS", modules_to_save=["classifier"])
        return (model, data["train"], data["validation"], DataCollatorWithPadding(tokenizer), accuracy, tokens)
    processor = AutoImageProcessor.from_pretrained(args.model)
    data, names = image_classification_data(args, processor)
    model = AutoModelForImageClassification.from_pretrained(
        args.model,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        ignore_mismatched_sizes=True,
    )  # replaces the old head
    model = lora_model(args, model, modules_to_save=["classifier"])
    return model, data["train"], data["validation"], default_data_collator, accuracy, None


def length_grouping(on: bool) -> dict:
    """TrainingArguments' switch for length-grouped batches under the installed transformers' name for it: 5.2x
    renamed group_by_length to train_sampling_strategy="group_by_length"."""
    from transformers import TrainingArguments

    if not on:
        return {}
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def run(args) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(args.seed)  # before the model: the new head's initial weights come from this seed
    model, train_set, eval_set, collator, metrics_fn, tokens = build(args)
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=args.seed,
        report_to="none",
        use_cpu=args.device == "cpu",
        bf16=args.precision == "bf16",
        fp16=args.precision == "fp16",
        tf32=args.tf32 or None,
        **length_grouping(args.group_by_length),
        # Images are decoded by the transform: Trainer must not drop the image column it reads.
        remove_unused_columns=args.task != "image-classification",
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        compute_metrics=metrics_fn,
    )
    train_metrics = trainer.train().metrics
    eval_metrics = trainer.evaluate()
    if args.task == "causal-lm":
        eval_metrics.update(causal_lm_eval_loss(trainer, eval_metrics["eval_loss"], args.block_size))
    return {
        "train_samples_per_second": train_metrics["train_samples_per_second"],
        "train_runtime": train_metrics["train_runtime"],
        "train_loss": train_metrics.get("train_loss"),
        "eval": eval_metrics,
        "tokens_per_example": tokens,
        "train_examples": len(train_set),
        "eval_examples": len(eval_set),
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / MIB if args.device == "cuda" else None,
        # As Trainer read them: what "tuned" changed.
        "trainer_settings": {
            "bf16": training_args.bf16,
            "fp16": training_args.fp16,
            "tf32": training_args.tf32,
            "length_grouped": getattr(training_args, "train_sampling_strategy", None) == "group_by_length"
            or bool(getattr(training_args, "group_by_length", False)),
        },
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=("causal-lm", "text-classification", "image-classification"))
    parser.add_argument("--model", required=True, help="local checkpoint folder")
    parser.add_argument("--train-file", required=True)
    parser.add_argument("--validation-file", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--eval-batch-size", type=int, required=True)
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.1)
    parser.add_argument("--target-modules", required=True, help="comma-separated module names")
    parser.add_argument("--max-length", type=int, help="tokens per text (text classification)")
    parser.add_argument("--block-size", type=int, help="tokens per block (causal LM)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("no", "bf16", "fp16"), default="no", help="Trainer's mixed precision")
    parser.add_argument("--group-by-length", action="store_true", help="length-grouped training batches (text)")
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls (CUDA)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    result = run(args)
    result["in_process_seconds"] = time.perf_counter() - start  # after the imports of this module
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
