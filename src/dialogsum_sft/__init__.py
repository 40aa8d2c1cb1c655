"""QLoRA supervised fine-tuning of instruct LLMs for dialogue summarization on DialogSum, built on TRL."""

import logging
import warnings


__version__ = "0.1.0"

# Import-time noise the user can do nothing about, silenced here because every entry point imports this package
# before bitsandbytes or transformers (a one-line error must stay one line):
# - bitsandbytes' CPU backend, on CPUs with AVX512-BF16, tries the optional `kernels` package (which would fetch a
#   kernel from the Hub) and logs a warning when it is absent; its pure-PyTorch 4-bit path is used either way.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# - TRL's SFTConfig defaults `gradient_checkpointing`, which transformers 5 deprecates in favour of
#   `activation_checkpointing`; the warning fires for every config, whatever the recipe says.
warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
