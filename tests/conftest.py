import os
import shutil

import pytest

from helpers import DATA_DIR, SMOLLM2_DIR, read_rows, tiny_llama, write_rows
from hub_server import hub_server  # noqa: F401  (the loopback Hub fixture)


@pytest.fixture(scope="session")
def data_dir():
    # CI must fail, not skip, when the real data is missing.
    assert os.path.isfile(os.path.join(DATA_DIR, "train.jsonl")), f"DialogSum copy missing at {DATA_DIR}"
    return DATA_DIR


@pytest.fixture(scope="session")
def smollm2_dir():
    assert os.path.isfile(os.path.join(SMOLLM2_DIR, "config.json")), "run `make model` to build the embedded model"
    return SMOLLM2_DIR


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory, data_dir):
    """The first rows of each real DialogSum split, short enough for fast CPU tests."""
    rows = {split: [r for r in read_rows(data_dir, split, 60) if len(r["dialogue"]) < 700][:24]
            for split in ("train", "validation", "test")}
    return write_rows(tmp_path_factory.mktemp("dialogsum"), rows)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir):
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer and chat template."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_dir, hidden_size=64, initializer_range=0.02,
                      tie_word_embeddings=True, max_position_embeddings=2048)


@pytest.fixture
def clean_dir(tmp_path):
    path = tmp_path / "out"
    yield str(path)
    shutil.rmtree(path, ignore_errors=True)
