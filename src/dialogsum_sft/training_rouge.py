"""ROUGE while training: at every evaluation, summaries of a fixed validation subset, scored like evaluate.py.

Teacher-forced eval loss says little about the summaries a model writes; this generates them. The subset is the
first `rouge_eval_samples` dialogues of the eval split, prompted, batched and stopped exactly as evaluation does
(`generation.summarize`: greedy, left padding, every stop id), and scored with `rouge.score`. The trainer adds
the scores to its eval metrics (`eval_rouge1`, `eval_rouge2`, `eval_rougeL`, `eval_rougeLsum`), so TensorBoard
and trainer_state.json log them and `metric_for_best_model: eval_rouge2` keeps the best checkpoint by ROUGE;
`eval_rouge_seconds` is what each evaluation cost.

Under DDP every rank summarizes its share (every world-size-th dialogue) and the summaries are gathered, so all
ranks score the same list and get identical metrics. FSDP and ZeRO-3 shard the weights, which generation cannot
use as they are: refused (`check_supported`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .data import unique_dialogues
from .errors import RecipeError
from .generation import summarize
from .model import stop_token_ids
from .rouge import ROUGE_TYPES, score


@dataclass
class TrainingRouge:
    dialogues: list[str]
    references: list[list[str]]
    stop_ids: list[int]
    batch_size: int
    max_new_tokens: int = 128

    @classmethod
    def for_trainer(cls, trainer, rows) -> TrainingRouge:
        """The subset and settings the trainer's recipe asks for (`rouge_eval_samples` of `rows`, its eval batch
        size, the stop ids of its model), after checking the trainer's parallelism lets every rank generate."""
        check_supported(trainer)
        return cls.from_rows(
            rows, trainer.args.rouge_eval_samples, batch_size=trainer.args.per_device_eval_batch_size,
            max_new_tokens=trainer.args.rouge_eval_max_new_tokens,
            stop_ids=stop_token_ids(trainer.processing_class, trainer.model.generation_config),
        )

    @classmethod
    def from_rows(cls, rows, count: int, **settings) -> TrainingRouge:
        """The first `count` unique dialogues of `rows` (DialogSum rows: dialogue, summary, id)."""
        subset = unique_dialogues(rows)[:count]
        return cls([row["dialogue"] for row in subset], [row["references"] for row in subset], **settings)

    def evaluate(self, model, tokenizer, accelerator) -> dict[str, float]:
        """`{rouge_type: F x100 mean over references, "rouge_seconds": s}`, identical on every rank.

        `model` is the unwrapped model in whatever mode training left it; it is summarized from in eval mode (no
        dropout, no gradient checkpointing, KV cache on) and put back in its mode.
        """
        from accelerate.utils import gather_object

        start = time.perf_counter()
        mine = list(range(accelerator.process_index, len(self.dialogues), accelerator.num_processes))
        was_training = model.training
        model.eval()
        try:
            summaries = summarize(model, tokenizer, [self.dialogues[index] for index in mine],
                                  batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                                  stop_ids=self.stop_ids, progress=False)
        finally:
            model.train(was_training)
        gathered = dict(gather_object(list(zip(mine, summaries))))
        seconds = max(gather_object([time.perf_counter() - start]))  # the slowest rank is what training waited
        scores = score([gathered[index] for index in range(len(self.dialogues))], self.references)
        return {**{rouge_type: scores["mean_over_references"][rouge_type] for rouge_type in ROUGE_TYPES},
                "rouge_seconds": round(seconds, 2)}


def check_supported(trainer) -> None:
    """ROUGE while training needs each rank to hold whole weights: one GPU, DDP or ZeRO-1/2, not FSDP or ZeRO-3."""
    deepspeed = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if trainer.is_fsdp_enabled or (deepspeed is not None and deepspeed.zero_stage == 3):
        raise RecipeError(
            "rouge_eval_samples generates summaries, which needs whole weights on every rank; FSDP and ZeRO-3 "
            "shard them: set rouge_eval_samples: 0 (or use ddp.yaml / zero2.yaml)"
        )
