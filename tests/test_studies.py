"""Every study script runs in --quick mode and writes its outputs."""

import csv
import importlib.util
import math
from pathlib import Path

import pytest

STUDIES = Path(__file__).parent.parent / "studies"


def load(name):
    spec = importlib.util.spec_from_file_location(name, STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_horizon_bias_quick_writes_a_row_per_method_and_batch(tmp_path, capsys):
    load("short_horizon_bias").main(["--quick", "--out", str(tmp_path)])
    with open(tmp_path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["batch_size"], row["method"]) for row in rows} == {
        (batch, method) for batch in ("32", "512") for method in load("short_horizon_bias").methods()
    }
    fixed = [row for row in rows if row["method"] == "SGD fixed lr 1e-3"]
    assert all(float(row["lr_end"]) == 1e-3 for row in fixed)
    assert (tmp_path / "learning_rates.png").stat().st_size > 10_000
    assert (tmp_path / "config.json").exists() and (tmp_path / "log.txt").exists()
    assert "| batch | method |" in capsys.readouterr().out


def test_vs_optuna_quick_writes_a_verdict_per_task_and_sampler(tmp_path, capsys):
    rows = load("vs_optuna").main(["--quick", "--out", str(tmp_path)])
    assert {(row["task"], row["versus"]) for row in rows} == {
        (task, sampler) for task in ("digits", "mnist1d") for sampler in ("grid", "random", "tpe")}
    for row in rows:  # one run of 150 steps against 16 trials of 150 steps
        assert row["evaluation_ratio"] == 1 / 16
        assert math.isfinite(row["loss_ratio"]) and row["loss_ratio"] > 0
    assert (tmp_path / "verdict.md").read_text().startswith("| task |")
    assert (tmp_path / "digits-sgd" / "optuna.db").exists()
    assert "target met" in capsys.readouterr().out


def test_ultimate_optimizer_quick_reports_towers_and_sensitivity(tmp_path):
    tower_rows, sensitivity = load("ultimate_optimizer").main(["--quick", "--out", str(tmp_path)])
    assert [(row["tower"], row["depth"]) for row in tower_rows][:2] == [("SGD", 0), ("SGD/SGD", 1)]
    assert len(sensitivity) == 4 * 8
    assert (tmp_path / "sensitivity.png").stat().st_size > 10_000
    with open(tmp_path / "sensitivity.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 32


def test_depth_sweep_quick_measures_every_depth(tmp_path):
    rows = load("depth_sweep").main(["--quick", "--out", str(tmp_path)])
    assert [row["depth"] for row in rows] == [0, 1, 2, 4, 8]
    assert all(math.isfinite(row["valid_loss"]) and row["ms_per_step"] > 0 for row in rows)
    assert (tmp_path / "depth_sweep.png").stat().st_size > 10_000


def test_one_exact_step_quick_reaches_the_closed_form_in_one_newton_step(tmp_path):
    closed, one_step, basins = load("one_exact_step").main(["--quick", "--out", str(tmp_path)])
    float64 = [row["relative_error"] for row in closed if row["dtype"] == "float64"]
    assert max(float64) < 1e-12
    assert {row["order"] for row in one_step} == {1, 2, 3, 4}
    assert all(math.isfinite(row["start_loss"]) for row in one_step)
    assert {row["method"] for row in basins} == {"gradient descent", "Newton", "Taylor order 3"}
    for name in ("closed_form.csv", "one_step.csv", "basins.csv", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "basins.png").stat().st_size > 10_000


def test_precision_quick_locates_minimisers_to_about_sqrt_eps_by_values(tmp_path):
    rows = load("precision").main(["--quick", "--out", str(tmp_path)])
    by_values = [row for row in rows if row["method"].startswith("function values")]
    for row in by_values:  # never better than eps, never worse than 10 sqrt(eps) (the formula's scale)
        eps = {"float32": 2.0**-24, "float64": 2.0**-53}[row["dtype"]]
        assert row["error"] < 10 * math.sqrt(eps)
    assert (tmp_path / "precision.png").stat().st_size > 10_000


def test_flatness_quick_measures_every_method(tmp_path):
    rows = load("flatness").main(["--quick", "--out", str(tmp_path)])
    assert len(rows) == len(load("flatness").methods())
    assert all(math.isfinite(row["sharpness"]) and row["sharpness"] > 0 for row in rows)
    assert (tmp_path / "flatness.png").stat().st_size > 10_000


def test_an_interrupted_study_resumes_from_its_finished_runs(tmp_path):
    first = load("flatness").main(["--quick", "--out", str(tmp_path)])
    finished = sorted((tmp_path / "runs").glob("*.json"))
    assert len(finished) == len(first)
    finished[0].unlink()  # as if the study had been killed before its last run
    again = load("flatness").main(["--quick", "--out", str(tmp_path)])
    assert again == first and len(list((tmp_path / "runs").glob("*.json"))) == len(first)


def test_l2l_quadratic_quick_compares_the_learned_optimizers_with_tuned_baselines(tmp_path, capsys):
    import torch

    import recurse as rc

    study = load("l2l_quadratic")
    rows, meta_log = study.main(["--quick", "--out", str(tmp_path)])
    runs = {(row["method"].split(" (")[0], row["tuned_for"]) for row in rows}
    baselines = {(method, metric) for method in ("SGD", "Nesterov momentum", "RMSprop", "Adam")
                 for metric in ("final", "sum")}
    assert runs == baselines | {(method, "-") for method in study.LEARNED.values()}
    assert len(rows) == 10 * 100 and all(math.isfinite(row["final_loss"]) for row in rows)
    assert len(meta_log) == 2 * 60 and all(math.isfinite(entry["meta_loss_per_task"]) for entry in meta_log)
    assert all(entry["meta_gradient_norm"] > 0 for entry in meta_log)
    assert (tmp_path / "l2l_quadratic.png").stat().st_size > 10_000
    assert "| LSTM, meta-loss: sum of log losses |" in capsys.readouterr().out
    # the saved optimizer is the one evaluated: reloaded, it reproduces its held-out losses
    lstm = rc.LSTMOptimizer.from_state_dict(rc.checkpoint.load(tmp_path / "lstm_log.pt"))
    final = study.run_learned(lstm, rc.problems.QuadraticFamily(10, seed=1).sample_batch(100))[-1]
    assert final.dtype == torch.float64
    assert final.tolist() == [row["final_loss"] for row in rows if row["method"] == study.LEARNED["log"]]


def test_stability_quick_reports_every_variant_and_unroll_length(tmp_path):
    study = load("stability")
    rows = study.main(["--quick", "--out", str(tmp_path)])
    assert [(row["variant"], row["unroll"]) for row in rows] == [
        (variant, unroll) for variant in study.VARIANTS for unroll in study.UNROLLS]
    for row in rows:
        assert row["meta_steps"] == 4 * 100 // row["unroll"]
        assert 0 <= row["rolled_back_share"] <= 1
        assert math.isfinite(row["mean_log10_final_loss"]) and row["median_meta_gradient_norm"] > 0
    with open(tmp_path / "meta_training.csv") as handle:
        assert len(list(csv.DictReader(handle))) == sum(row["meta_steps"] for row in rows)
    assert (tmp_path / "stability.png").stat().st_size > 10_000


def test_l2l_mlp_quick_runs_the_learned_optimizer_and_tuned_adam_on_every_architecture(tmp_path, capsys):
    study = load("l2l_mlp")
    rows, meta_log = study.main(["--quick", "--out", str(tmp_path)])
    assert {(row["architecture"], row["method"] == "LSTM") for row in rows} == {
        (name, learned) for name in study.ARCHITECTURES for learned in (False, True)}
    assert len(rows) == 4 * 2 * 8 and len(meta_log) == 30
    assert all(math.isfinite(row["final_minibatch_loss"]) and 0 <= row["valid_accuracy"] <= 1 for row in rows)
    assert (tmp_path / "l2l_mlp.png").stat().st_size > 10_000 and (tmp_path / "lstm.pt").exists()
    assert "| 20 ReLU | LSTM |" in capsys.readouterr().out


def test_tying_quick_compares_tied_and_untied_towers_at_every_start(tmp_path):
    study = load("tying")
    rows = study.main(["--quick", "--out", str(tmp_path)])
    assert {(row["method"], row["initial_lr"]) for row in rows} == {
        (method, lr) for method in study.METHODS for lr in study.INITIAL_LRS}
    alone = [row for row in rows if row["method"] == "SGD alone"]
    assert all(row["final_lr"] == row["initial_lr"] and not row["diverged"] for row in alone)
    assert all(row["diverged"] or math.isfinite(row["valid_loss"]) for row in rows)
    assert "| tied depth 2, RMS |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "tying.png").stat().st_size > 10_000


def test_a_rerun_reloads_the_meta_trained_optimizers_instead_of_training_them_again(tmp_path, monkeypatch):
    study = load("l2l_quadratic")
    first, _ = study.main(["--quick", "--out", str(tmp_path), "--meta-steps", "10"])

    def no_training(*args, **kwargs):
        raise AssertionError("meta-trained again")

    monkeypatch.setattr(study, "meta_train", no_training)
    again, _ = study.main(["--quick", "--out", str(tmp_path), "--meta-steps", "10"])
    assert again == first  # the reloaded LSTMs give the very same held-out losses


def test_a_study_folder_holds_its_config_and_a_log_of_roll_backs(tmp_path):
    import json

    import torch

    import recurse as rc
    from recurse.reporting import study_folder, study_parser

    args = study_parser("a study", "quick").parse_args(["--quick", "--out", str(tmp_path)])
    out = study_folder(args, "example")
    config = json.loads((out / "config.json").read_text())
    assert config["study"] == "example" and config["options"]["quick"] is True
    assert config["options"]["out"] == str(tmp_path) and config["torch"] == torch.__version__
    theta = torch.zeros(2, requires_grad=True)
    opt = rc.HyperOptimizer([theta], rc.SGD(0.1))
    theta.grad = torch.tensor([float("nan"), 0.0])
    opt.step()  # rolled back and logged
    log = (out / "log.txt").read_text()
    assert "study example started" in log and "non-finite gradient at step 1" in log


def test_rollback_quick_rolls_back_what_diverges_and_leaves_the_others_alone(tmp_path):
    """What rc.Rollback guarantees on any machine, not how lucky one run was.

    The quadratic at 1e3x the stable lr diverges wherever it runs (SGD on a
    quadratic is a linear map, and one of its roots has modulus near 1e3);
    whether an overshooting MLP tower diverges, and where a rescued one ends,
    depends on the CPU's floating-point path, so those runs are held only to
    the mechanism (tests/test_rollback.py checks each rollback of such a run
    restores its snapshot bit for bit and halves the lr). A run may end
    diverging: divergence that starts in its last ``patience`` steps is
    not yet a rollback."""
    rows = load("rollback").main(["--quick", "--out", str(tmp_path)])
    pairs = {}
    for row in rows:
        pairs.setdefault(row["run"], {})[row["rc.Rollback"]] = row
    assert len(pairs) == 4 and all(set(pair) == {"no", "yes"} for pair in pairs.values())
    for run, pair in pairs.items():
        watched, unwatched = pair["yes"], pair["no"]
        assert isinstance(watched["rollbacks"], int), run  # not beyond max_rollbacks
        if not watched["rollbacks"]:  # never rolled back: watching changed nothing, bit for bit
            assert (watched["final_loss"], watched["final_lr"]) == (unwatched["final_loss"], unwatched["final_lr"]), run
    for run in ("quadratic, SGD lr 1e3/L fixed", "quadratic, depth 2 from lr 1e3/L"):
        watched, unwatched = pairs[run]["yes"], pairs[run]["no"]
        assert not unwatched["final_over_first"] < 1e3, run  # inf, or finite and huge
        assert watched["rollbacks"] >= 1 and watched["final_over_first"] < 0.05, run
    fixed = pairs["quadratic, SGD lr 1e3/L fixed"]  # each rollback halved the lr, and nothing else moved it
    assert fixed["yes"]["final_lr"] == fixed["no"]["final_lr"] * 0.5 ** fixed["yes"]["rollbacks"]
    assert (tmp_path / "summary.md").read_text().startswith("| run | steps | rc.Rollback |")


def test_tuning_free_quick_compares_every_method_on_every_task_against_the_searches(tmp_path):
    results, summary, sensitivity = load("tuning_free").main(["--quick", "--out", str(tmp_path)])
    tasks = {row["task"] for row in results}
    assert tasks == {"digits", "mnist1d", "digits_cnn", "char_lm"}
    methods = len(load("tuning_free").METHODS)
    assert len(results) == methods * len(tasks) and len(summary) == methods and len(sensitivity) == len(tasks)
    assert all(row["best_trial"] > 0 and row["over_best_trial"] == row["valid_loss"] / row["best_trial"]
               for row in results)
    assert all(row["spread"] >= 1.0 for row in sensitivity)
    for name in ("results.csv", "summary.csv", "sensitivity.csv", "results.json", "summary.md", "curves.png",
                 "learned_lr.png"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_schedules_quick_shows_a_constant_schedule_changes_nothing(tmp_path):
    rows = load("schedules").main(["--quick", "--out", str(tmp_path)])
    by = {(row["schedule"], row["method"]): row for row in rows}
    for method in ("depth 3 recipe", "tower depth 2", "Adam 1e-3"):
        assert by[("constant (LambdaLR 1.0)", method)]["valid_loss"] == by[("none", method)]["valid_loss"]
        assert by[("linear decay to 0", method)]["last_step_lr"] == 0.0
    assert by[("linear decay to 0", "depth 3 recipe")]["learned_lr"] != 1e-3  # (learned under the decay)


def test_a_missing_peer_names_the_extra_that_installs_it():
    study = load("tuning_free")
    with pytest.raises(ImportError, match=r"compares with no_such_peer, from the peers extra: pip install -e "
                                          r"\"\.\[peers\]\""):
        study._peer("no_such_peer", "Optimizer")


def test_every_tuning_free_design_builds_an_optimizer_that_steps(tmp_path):
    """Each --design (those without a held-out loss) trains a small model three steps, and a run that ends
    non-finite gives a NaN spread instead of failing the study."""
    import math

    import torch

    study = load("tuning_free")
    inputs, targets = torch.randn(16, 4), torch.randn(16, 1)
    for name, design in study.DESIGNS.items():
        make = design(1e-3)
        if hasattr(make, "held_out"):
            continue
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        opt = make(model.parameters())
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(inputs), targets).backward()
            opt.step()
        assert all(torch.isfinite(p).all() for p in model.parameters()), name
        assert opt.hyperparameters(), name
    assert math.isnan(study._spread([1.0, math.inf])) and study._spread([1.0, 3.0]) == pytest.approx(2 ** 0.5)
