"""Per-process logging for training, as alignment-handbook does it: under DDP only the main process reports."""

from __future__ import annotations

import logging


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(training_args=None) -> None:
    """INFO on the main process (unless the recipe sets log_level), `log_level_replica` (warning) on the others.

    transformers and datasets get the same level from `get_process_log_level`, so replicas stay quiet there too.
    Without training arguments (evaluation, inference, export: one process) it is plain INFO.
    """
    if training_args is None:
        logging.basicConfig(format=FORMAT, level=logging.INFO)
        return
    import datasets
    import transformers

    process_level = training_args.get_process_log_level()
    explicit = training_args.log_level != "passive"
    level = process_level if explicit or not training_args.should_log else logging.INFO
    logging.basicConfig(format=FORMAT, level=level)
    logging.getLogger().setLevel(level)
    datasets.utils.logging.set_verbosity(process_level)
    transformers.utils.logging.set_verbosity(process_level)
