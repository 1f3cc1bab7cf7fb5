"""Trying a finished run: generate text, or classify a text or an image, with the trained adapter.

Loading imports torch, transformers and peft, so it happens only when the Playground asks for a run.
"""

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainedModel:
    model: Any  # a PeftModel (or the fully fine-tuned model) in eval mode
    processor: Any  # tokenizer or image processor
    info: dict  # adapter/lora_lab.json: task, base_model, labels, max_seq_length ...
    # The app shares one loaded model between sessions; switching the adapter off must not interleave.
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def task(self) -> str:
        return self.info["task"]


def load(run_dir: str | Path) -> TrainedModel:
    from finetune.inference import load_trained

    return TrainedModel(*load_trained(run_dir))


def _ranked(trained: TrainedModel, logits) -> list[tuple[str, float]]:
    probabilities = logits.float().softmax(dim=-1)[0].tolist()
    labels = trained.info["labels"]
    return sorted(zip(labels, probabilities), key=lambda pair: pair[1], reverse=True)


def classify_text(trained: TrainedModel, text: str) -> list[tuple[str, float]]:
    """(label, probability) for every class, most likely first."""
    import torch

    inputs = trained.processor(
        text, truncation=True, max_length=trained.info.get("max_seq_length") or 512, return_tensors="pt"
    )
    with torch.no_grad():
        return _ranked(trained, trained.model(**inputs).logits)


def classify_image(trained: TrainedModel, image) -> list[tuple[str, float]]:
    """(label, probability) for every class of a PIL image, most likely first."""
    import torch

    inputs = trained.processor(images=image.convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        return _ranked(trained, trained.model(**inputs).logits)


def generate(
    trained: TrainedModel, prompt: str, max_new_tokens: int = 40, temperature: float = 0.8, seed: int = 0
) -> dict[str, str]:
    """Continuations of ``prompt`` by the base model and the fine-tuned one, sampled with the same seed."""
    import torch

    tokenizer = trained.processor
    inputs = tokenizer(prompt or tokenizer.eos_token, return_tensors="pt")
    settings = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.eos_token_id,
        "do_sample": temperature > 0,
        **({"temperature": temperature} if temperature > 0 else {}),
    }

    def sample(model) -> str:
        torch.manual_seed(seed)
        with torch.no_grad():
            output = model.generate(**inputs, **settings)
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    with trained.lock:
        results = {"finetuned": sample(trained.model)}
        if hasattr(trained.model, "disable_adapter"):
            with trained.model.disable_adapter():  # the same weights without the LoRA update: the base model
                results["base"] = sample(trained.model)
            return results
    from transformers import AutoModelForCausalLM

    results["base"] = sample(AutoModelForCausalLM.from_pretrained(trained.info["base_model"]).eval())
    return results
