"""Run by torchrun on 2 CPU processes (gloo): wraps a tiny LoRA GPT-2 in FSDP1 (use_orig_params, as the fsdp preset)
with the trainer's auto-wrap policy or the preset's transformer policy alone, trains one step and prints, as JSON,
rank 0's gradient elements held by FSDP's flat parameters and the trainable elements."""

import functools
import json
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from peft import LoraConfig, get_peft_model
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from transformers import AutoModelForCausalLM
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from finetune.training.processes import wrap_lora_layers_apart

checkpoint, policy_name = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
torch.manual_seed(0)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(checkpoint), LoraConfig(r=4, target_modules=["c_attn"]))
# The preset's TRANSFORMER_BASED_WRAP, as accelerate builds it from _no_split_modules.
blocks = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={GPT2Block})
plugin = SimpleNamespace(auto_wrap_policy=blocks)
if policy_name == "trainer":
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin))
    wrap_lora_layers_apart(accelerator, model)
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # whole, before FSDP shards them
wrapped = FSDP(model, auto_wrap_policy=plugin.auto_wrap_policy, use_orig_params=True, device_id=torch.device("cpu"))
ids = torch.randint(0, 100, (2, 16))
wrapped(input_ids=ids, labels=ids).loss.backward()
flat = [m._flat_param for m in wrapped.modules() if isinstance(m, FSDP) and m._flat_param is not None]
if dist.get_rank() == 0:
    print(
        json.dumps(
            {
                "flat_grad_elements": sum(f.grad.numel() for f in flat if f.grad is not None),
                "trainable_elements": trainable,
                "units": len(flat),
            }
        ),
        flush=True,
    )
dist.destroy_process_group()
