"""The training recipe's parts (finetune/train.py runs them): LoRA targets and variants (lora.py), precision and speed
(speed.py), the processes and trackers (processes.py), the model and its passes (engine.py), where a run stands
(progress.py), checkpoints (checkpoints.py), throughput (throughput.py), saved results (artifacts.py), the
reproducibility record (reproducibility.py), bootstrap intervals of the scores (intervals.py) and advice on settings
before a run (advice.py)."""
