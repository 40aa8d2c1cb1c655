"""TRL's SFTTrainer, with the one fix this recipe needs to resume QLoRA runs exactly, its speed options, and ROUGE
in its evaluations."""

from __future__ import annotations

import logging

import torch
from trl import SFTTrainer

from .fused_lora import compile_decoder_layers, fuse_lora


logger = logging.getLogger(__name__)


class QLoRASFTTrainer(SFTTrainer):
    # A training_rouge.TrainingRouge set by scripts/sft.py when the recipe asks for rouge_eval_samples.
    training_rouge = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # After SFTTrainer has wrapped the model with LoRA and the Trainer has applied Liger's kernels: the fused
        # projections then run inside whichever attention/MLP forward is installed (Liger's SwiGLU MLP included).
        if getattr(self.args, "fused_lora", False):
            counts = fuse_lora(self.model)
            logger.info(f"fused_lora: {counts['projections']} LoRA projections fused, "
                        f"{counts['shared_input_groups']} shared-input groups (q/k/v, gate/up)")
            if not counts["projections"]:
                logger.warning("fused_lora: no 4-bit LoRA projection qualified; PEFT's path runs everywhere")
        if getattr(self.args, "compile_layers", False):
            logger.info(f"compile_layers: {compile_decoder_layers(self.model)} decoder layers compiled")

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The eval loss, plus the ROUGE of generated summaries: in the metrics before `evaluate` logs them, so
        TensorBoard, trainer_state.json and `metric_for_best_model` all see them."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        if self.training_rouge is not None:
            model = self.accelerator.unwrap_model(self.model)
            scores = self.training_rouge.evaluate(model, self.processing_class, self.accelerator)
            output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in scores.items()})
        return output

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
