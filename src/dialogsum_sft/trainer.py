"""TRL's SFTTrainer, with the one fix this recipe needs to resume QLoRA runs exactly."""

from __future__ import annotations

import torch
from trl import SFTTrainer


class QLoRASFTTrainer(SFTTrainer):
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Resume with the adapter in the dtype training used.

        For quantized bases SFTTrainer keeps the LoRA weights in bf16 (QLoRA paper), but the Trainer resumes through
        PEFT's `load_adapter`, which upcasts them to fp32: the resumed run would then train differently from an
        uninterrupted one. Cast them back the way SFTTrainer.__init__ does.
        """
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
            for name, param in self.model.named_parameters():
                if param.requires_grad and "lora_magnitude_vector" not in name:
                    param.data = param.data.to(torch.bfloat16)
