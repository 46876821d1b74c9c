"""Fine-tuning: local LoRA / full SFT on TRL + PEFT (``run_finetune``), and OpenAI's
fine-tuning API (``waluigi.finetune.openai_ft``). Importing this package is light: torch,
transformers and TRL are imported when training starts."""

from waluigi.finetune.config import PRESETS, FinetuneConfig
from waluigi.finetune.masking import assistant_mask
from waluigi.finetune.train import FinetuneResult, run_finetune

__all__ = ["PRESETS", "FinetuneConfig", "FinetuneResult", "assistant_mask", "run_finetune"]
