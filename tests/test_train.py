"""End to end: train on digits, check accuracy, the ledger, the summary and TensorBoard."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from torchchain.chain.verify import verify_ledger
from torchchain.cli import main as cli_main
from torchchain.experiment import run

from composing import FAST, compose_config

SUMMARY_KEYS = {"final_accuracy", "final_loss", "rounds", "blocks", "rejected", "ledger", "wall_seconds", "median_round_seconds"}


@pytest.fixture(scope="module")
def honest_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("honest")
    summary = run(compose_config(["rounds=8", *FAST]), run_dir)
    return run_dir, summary


def test_training_learns_digits(honest_run):
    _, summary = honest_run
    assert summary["final_accuracy"] >= 0.85
    assert summary["rounds"] == 8 and summary["blocks"] == 9 and summary["rejected"] == 0


def test_summary_json_has_the_documented_keys(honest_run):
    run_dir, summary = honest_run
    written = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(written)
    assert written["ledger"] == summary["ledger"]


def test_ledger_verifies_and_cli_says_so(honest_run, capsys):
    run_dir, _ = honest_run
    report = verify_ledger(run_dir / "ledger")
    assert report.height == 8 and report.transactions == 8 * 5
    assert cli_main(["verify", str(run_dir / "ledger")]) == 0
    assert "OK" in capsys.readouterr().out


def test_tensorboard_holds_the_documented_tags(honest_run):
    run_dir, _ = honest_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in (
        "eval/accuracy", "eval/loss", "time/round_seconds", "chain/mine_seconds", "chain/height", "chain/rejected",
        "time/train", "time/hash", "time/sign", "time/validate", "time/aggregate", "time/mine", "time/write",
    ):
        assert tag in scalars, tag
    assert "clients/update_norm" in events.Tags()["histograms"]
    assert any(t.startswith("clients/update_norm/client_00_") for t in scalars)
    assert any(t.startswith("clients/trusted/") for t in scalars)
    assert len(events.Scalars("eval/accuracy")) == 8
    assert "config/text_summary" in events.Tags()["tensors"]


def test_rounds_jsonl_holds_each_round_as_tensorboard_does(honest_run):
    run_dir, summary = honest_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    lines = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == list(range(1, 9))
    assert [line["eval/accuracy"] for line in lines] == pytest.approx([e.value for e in events.Scalars("eval/accuracy")])
    assert lines[-1]["eval/accuracy"] == pytest.approx(summary["final_accuracy"])
    times = [line["unix_time"] for line in lines]
    assert times == sorted(times)
    # Consecutive rounds end at least a round's time apart.
    assert all(b - a >= line["time/round_seconds"] * 0.99 for a, b, line in zip(times, times[1:], lines[1:]))
    assert {"time/train", "time/mine", "time/write", "chain/height"} <= set(lines[0])


def test_same_seed_gives_the_same_models(tmp_path, honest_run):
    _, first = honest_run
    again = run(compose_config(["rounds=8", *FAST]), tmp_path)
    assert again["model_hash"] == first["model_hash"]


def test_signflip_is_held_by_median_but_hurts_fedavg(tmp_path):
    common = ["clients=5", "attack=signflip", "attack.scale=5", "rounds=8", *FAST]
    robust = run(compose_config(common), tmp_path / "median")
    naive = run(compose_config([*common, "strategy=fedavg"]), tmp_path / "fedavg")
    assert robust["final_accuracy"] >= 0.85
    assert naive["final_accuracy"] < robust["final_accuracy"] - 0.3


def test_regression_logs_rmse(tmp_path):
    summary = run(compose_config(["experiment=regression", "rounds=5", *FAST]), tmp_path)
    assert "final_accuracy" not in summary
    from torchchain.data import load_diabetes

    # RMSE is in the target's units; always predicting the training mean scores about its std.
    assert 0 < summary["final_rmse"] < 0.85 * load_diabetes().target_scale
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "eval/rmse" in events.Tags()["scalars"]


def test_eval_is_logged_only_in_evaluated_rounds_and_hparams_name_the_parts(tmp_path):
    run(compose_config(["rounds=4", "runtime.eval_every=2", "strategy=krum", "strategy.pre=[nnm]", "clients=6", *FAST]), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/accuracy")] == [2, 4]
    assert len(events.Scalars("chain/height")) == 4
    lines = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines if "eval/accuracy" in line] == [2, 4]

    from tensorboard.plugins.hparams import plugin_data_pb2

    found = {}
    for path in (tmp_path / "tensorboard").rglob("events.out.tfevents.*"):
        tagged = EventAccumulator(str(path))
        tagged.Reload()
        try:
            content = tagged.PluginTagToContent("hparams")
        except KeyError:  # the scalar event file; add_hparams writes its own
            continue
        for blob in content.values():
            data = plugin_data_pb2.HParamsPluginData.FromString(blob)
            if data.HasField("session_start_info"):
                found.update({k: v.string_value or v.number_value for k, v in data.session_start_info.hparams.items()})
    assert found["strategy"] == "krum"
    assert "nnm" in found["strategy.pre"]
    assert found["rounds"] == 4


def test_rounds_jsonl_stays_valid_json_with_non_finite_values(tmp_path):
    from torchchain.telemetry import RunWriter

    writer = RunWriter(tmp_path / "tensorboard", rounds_file=tmp_path / "rounds.jsonl")
    writer.scalars(1, {"clients/update_norm": float("inf"), "eval/loss": float("nan"), "chain/height": 1})
    writer.close()
    line = json.loads((tmp_path / "rounds.jsonl").read_text())
    assert line.pop("unix_time") > 0
    assert line == {"round": 1, "clients/update_norm": None, "eval/loss": None, "chain/height": 1.0}
