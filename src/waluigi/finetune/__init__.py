"""Fine-tuning: local LoRA / full SFT on TRL + PEFT (``run_finetune``), and OpenAI's
fine-tuning API (``waluigi.finetune.openai_ft``). Importing this package is light: torch,
transformers and TRL are imported when training starts."""

from waluigi.finetune.config import PRESETS, FinetuneConfig, Recipe
from waluigi.finetune.masking import assistant_mask
from waluigi.finetune.plugins import L2ToStart, TrainingPlugin, forward_hooks
from waluigi.finetune.train import FinetuneResult, run_finetune

__all__ = ["PRESETS", "FinetuneConfig", "FinetuneResult", "L2ToStart", "Recipe", "TrainingPlugin", "assistant_mask",
           "forward_hooks", "run_finetune"]
