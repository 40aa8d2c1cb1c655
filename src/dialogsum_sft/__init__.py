"""QLoRA supervised fine-tuning of instruct LLMs for dialogue summarization on DialogSum, built on TRL."""

__version__ = "0.1.0"
