import json

import matplotlib.image
import pytest

from dialogsum_sft.plots import plot_benchmark, plot_loss, plot_loss_overlay, plot_rouge


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCORES = {"rouge1": 47.31, "rouge2": 21.05, "rougeL": 39.8, "rougeLsum": 42.6}


def assert_png(path):
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 100 and width > 100


def trainer_state() -> dict:
    history = [{"loss": 2.5 - 0.1 * i, "learning_rate": 2e-4, "step": 10 * i} for i in range(1, 11)]
    history += [{"eval_loss": 2.2, "step": 50}, {"eval_loss": 1.9, "step": 100}]
    history.append({"train_loss": 2.0, "train_runtime": 60.0, "step": 100})  # the final summary entry
    return {"global_step": 100, "log_history": history}


def test_plot_loss_from_dict_and_from_file(tmp_path):
    assert_png(plot_loss(trainer_state(), tmp_path / "loss.png"))
    state_file = tmp_path / "trainer_state.json"
    state_file.write_text(json.dumps(trainer_state()))
    out = plot_loss(state_file, tmp_path / "plots" / "loss_from_file.png")
    assert out == str(tmp_path / "plots" / "loss_from_file.png")
    assert_png(out)


def test_plot_loss_with_eval_loss_only(tmp_path):
    assert_png(plot_loss({"log_history": [{"eval_loss": 2.0, "step": 5}]}, tmp_path / "loss.png"))


@pytest.mark.parametrize(
    "state, message",
    [
        ({"log_history": []}, "nothing to plot"),
        ({"log_history": [{"train_loss": 2.0, "step": 10}]}, "nothing to plot"),
        ({"global_step": 3}, "no log_history"),
    ],
)
def test_plot_loss_without_losses_fails_clearly(tmp_path, state, message):
    with pytest.raises(ValueError, match=message):
        plot_loss(state, tmp_path / "loss.png")
    assert not (tmp_path / "loss.png").exists()


def test_plot_rouge_with_and_without_base(tmp_path):
    tuned = {"mean_over_references": SCORES, "best_of_references": SCORES}
    base = {"mean_over_references": {key: value - 12 for key, value in SCORES.items()}, "best_of_references": SCORES}
    assert_png(plot_rouge({"split": "test", "tuned": tuned, "base": base}, tmp_path / "rouge.png"))
    assert_png(plot_rouge({"split": "test", "tuned": tuned}, tmp_path / "rouge_tuned_only.png"))
    with pytest.raises(ValueError, match="no 'mean_over_references'"):
        plot_rouge({"tuned": {}}, tmp_path / "bad.png")


def test_plot_benchmark(tmp_path):
    rows = [
        {"setup": "1x H100, QLoRA", "tokens_per_s": 10234.5},
        {"setup": "1x H100, LoRA bf16", "tokens_per_s": 15890.0},
        {"setup": "2x H200, DDP", "tokens_per_s": 30110.2},
    ]
    out = plot_benchmark(rows, tmp_path / "throughput.png", "tokens_per_s", "setup", "Training throughput",
                         xlabel="tokens per second")
    assert_png(out)
    with pytest.raises(ValueError, match="no benchmark rows"):
        plot_benchmark([], tmp_path / "empty.png", "tokens_per_s", "setup", "t")
    with pytest.raises(ValueError, match="row 0 has no 'peak_gb'"):
        plot_benchmark(rows, tmp_path / "bad.png", "peak_gb", "setup", "t")


def test_plot_loss_adds_a_rouge_panel_when_training_logged_rouge(tmp_path):
    state = trainer_state()
    for entry in state["log_history"]:
        if "eval_loss" in entry:
            entry.update(eval_rouge1=30.0 + entry["step"] / 10, eval_rouge2=9.0, eval_rougeL=25.0)
    plain = matplotlib.image.imread(plot_loss(trainer_state(), tmp_path / "plain.png"))
    with_rouge = matplotlib.image.imread(plot_loss(state, tmp_path / "rouge.png"))
    assert with_rouge.shape[1] > 1.5 * plain.shape[1]  # a second panel beside the loss


def test_plot_loss_overlay_draws_one_curve_per_run(tmp_path):
    other = trainer_state()
    for entry in other["log_history"]:
        if "loss" in entry:
            entry["loss"] += 0.5
    one = matplotlib.image.imread(plot_loss_overlay({"a": trainer_state()}, tmp_path / "one.png"))
    two = matplotlib.image.imread(plot_loss_overlay({"a": trainer_state(), "b": other}, tmp_path / "two.png"))
    assert one.shape == two.shape and (one != two).any()  # the second run's curve and legend entry


def test_plot_loss_overlay_without_train_loss_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="no 'loss' entries"):
        plot_loss_overlay({"a": {"log_history": [{"eval_loss": 2.0, "step": 5}]}}, tmp_path / "x.png")
