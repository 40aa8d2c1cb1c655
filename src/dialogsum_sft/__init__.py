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
#   `activation_checkpointing`; the warning fires for every config, whatever the recipe says (and TRL and PEFT
#   call the deprecated `is_gradient_checkpointing` on every model they load).
warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing` is deprecated", category=FutureWarning)
# - DeepSpeed (when installed, imported by accelerate) announces on stdout that a machine without a GPU uses the CPU.
#   A filter, not a level: DeepSpeed resets its logger's level when it creates it.
logging.getLogger("DeepSpeed").addFilter(lambda record: "Setting accelerator to CPU" not in record.getMessage())
