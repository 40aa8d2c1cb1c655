#!/usr/bin/env python
"""Export a trained adapter as a merged checkpoint, GGUF files for llama.cpp and an Ollama Modelfile.

    make llama-cpp                                    # once: llama.cpp's converter and tools into .cache/llama.cpp
    python scripts/export.py outputs/run --output_dir exports/run                 # merged + GGUF F16 and Q8_0
    python scripts/export.py you/adapter --output_dir exports/run --formats gguf-q4_k_m
    python scripts/export.py outputs/run --output_dir exports/run --push_to_hub --hub_model_id you/run-gguf

The merged weights are the adapter folded into the base rounded to NF4 as in training, dequantized to bf16 (what
evaluate.py scores). The folder then runs with `llama-cli -m <file>.gguf` or `ollama create NAME -f Modelfile`.
"""


from dialogsum_sft.errors import ArgumentParser, run_cli
from dialogsum_sft.export import FORMATS, LLAMA_CPP_DIR, export, push_export
from dialogsum_sft.logs import setup_logging
from dialogsum_sft.publish import hub_repo_id


def parse_args(argv):
    parser = ArgumentParser(__doc__)
    parser.add_argument("adapter", help="training output dir, or Hub repo id of an adapter")
    parser.add_argument("--output_dir", required=True, help="new (or empty) folder for the export")
    parser.add_argument("--formats", nargs="+", default=["merged", "gguf-f16", "gguf-q8_0"],
                        help=f"any of {', '.join(FORMATS)} (default: merged gguf-f16 gguf-q8_0)")
    parser.add_argument("--revision", help="Hub revision of the adapter")
    parser.add_argument("--base_model", help="base model dir or Hub id (default: the local checkpoint it trained "
                                             "from if present, else adapter_config.json's Hub id)")
    parser.add_argument("--llama_cpp_dir", default=str(LLAMA_CPP_DIR), help="where make llama-cpp put llama.cpp")
    parser.add_argument("--push_to_hub", action="store_true", help="publish the export and its card, one commit")
    parser.add_argument("--hub_model_id", help="repo to push to, `name` or `namespace/name`")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    repo_id = hub_repo_id(args.hub_model_id, {}) if args.push_to_hub else None  # login checked before the long part
    manifest = export(args.adapter, args.output_dir, args.formats, base_model=args.base_model,
                      revision=args.revision, llama_cpp_dir=args.llama_cpp_dir)
    for name, info in manifest["formats"].items():
        print(f"{name}: {', '.join(info['files'])} ({info['bytes'] / 2**20:.0f} MiB, {info['seconds']} s)")
    print(f"export in {args.output_dir} ({manifest['weights']}: {manifest['weights_description']})")
    if repo_id:
        print(f"pushed to {repo_id}: {push_export(args.output_dir, repo_id, private=args.private)}")


if __name__ == "__main__":
    run_cli(main)
