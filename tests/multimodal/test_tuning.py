"""multimodal-tune: the space file is checked before any trial; trials run through the runner; a trial that
fails with a user error is recorded as failed and the search goes on; pruning stops trials through the
Trainer callback; the study resumes from its storage; trials.csv, best_config.yaml, plots are written."""

from __future__ import annotations

import json
import os

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from PIL import Image

from multimodal import ConfigError, load_config
from multimodal.tuning.cli import main as tune_main
from multimodal.tuning.space import parse_param, read_space
from multimodal.tuning.study import (
    PruningCallback,
    SearchSettings,
    best_trial,
    tie_warning,
    tune,
    write_outputs,
)


def _write(tmp_path, tiny_text_dir):
    os.makedirs(tmp_path / "img", exist_ok=True)
    rows = []
    for i in range(24):
        day = i % 2 == 0
        Image.fromarray(np.full((16, 16, 3), 200 if day else 50, np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"text": f"{'sunny' if day else 'dark'} {i}", "image": f"img/{i}.png", "label": "day" if day else "night",
                     "split": "test" if i >= 18 else ("validation" if i >= 14 else "train")})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    cfg = {"data": {"train": str(tmp_path / "m.csv"), "split_column": "split", "num_workers": 0, "audio_column": None,
                    "feature_cache": None},
           "model": {"encoders": {"text": f"text:{tiny_text_dir}", "image": "image:test_efficientnet"},
                     "encoder_kwargs": {"image": {"img_size": 32}}, "pretrained": False, "fusion_dim": 16},
           "train": {"output_dir": str(tmp_path / "out"), "epochs": 2, "batch_size": 8, "log_with": "none",
                     "progress_bar": False},
           "eval": {"html_report": False}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "train.head_lr": {"type": "log", "low": 1e-3, "high": 1e30},  # the top of the range makes the loss NaN
        "model.fusion": {"type": "categorical", "choices": ["concat", "gated"]},
        "model.fusion_dim": {"type": "int", "low": 8, "high": 32, "step": 8},
    }))
    return yaml.safe_load((tmp_path / "cfg.yaml").read_text())


def test_space_errors_name_the_file_and_key(tmp_path, tiny_text_dir):
    base = _write(tmp_path, tiny_text_dir)
    for spec, message in (({"type": "float", "low": 1, "high": 0}, "low .* must be < high"),
                          ({"type": "log", "low": 0, "high": 1}, "log scale needs low > 0"),
                          ({"type": "uniform", "low": 0, "high": 1}, "expected one of float, log, int, categorical"),
                          ({"type": "categorical", "choices": [[1, 2]]}, "must be scalars"),
                          ({"type": "int", "low": 1, "high": 5, "chioces": 1}, "unknown field")):
        with pytest.raises(ConfigError, match=message):
            parse_param("train.epochs", spec, "space.yaml")
    (tmp_path / "bad.yaml").write_text("train.head_lrr: {type: float, low: 0.1, high: 0.2}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*train.head_lrr.*did you mean 'train.head_lr'"):
        read_space(str(tmp_path / "bad.yaml"), base)
    (tmp_path / "bad.yaml").write_text("model.fusion: {type: categorical, choices: [concat, fancy]}\n")
    with pytest.raises(ConfigError, match="model.fusion='fancy'.*unknown fusion"):
        read_space(str(tmp_path / "bad.yaml"), base)
    with pytest.raises(SystemExit, match="^error: .*did you mean"):  # the CLI: one line, no traceback
        tune_main(["--config", str(tmp_path / "cfg.yaml"), "--space", str(tmp_path / "space.yaml"), "--trials", "1",
                   "model.fusoin=concat"])


@pytest.mark.slow
def test_failed_trial_is_recorded_and_the_search_goes_on_then_resumes(tmp_path, tiny_text_dir):
    base = _write(tmp_path, tiny_text_dir)
    out = tmp_path / "tune"
    good = {"train.head_lr": 0.01, "model.fusion": "concat", "model.fusion_dim": 16}
    settings = SearchSettings(str(out), 3, pruner="none", startup_trials=2, seed=0,
                              enqueue=[good, {**good, "train.head_lr": 1e30}, {**good, "model.fusion": "gated"}])
    summary = tune(base, read_space(str(tmp_path / "space.yaml"), base), settings, str(tmp_path / "cfg.yaml"))
    assert summary["trials"] == {"complete": 2, "fail": 1}
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["number"]) == [0, 1, 2] and list(trials["state"]) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "NaN" in trials.loc[1, "user_attrs_error"]
    assert not os.path.exists(out / "trials" / "trial-0000" / "model")  # models are not kept by default
    assert os.path.exists(out / "trials" / "trial-0000" / "metrics.json")
    best = summary["best_trial"]
    with open(out / "trials" / f"trial-{best['number']:04d}" / "metrics.json") as f:
        assert json.load(f)["validation"]["macro_f1"] == best["value"]
    cfg = load_config(str(out / "best_config.yaml"))  # runnable as is
    assert cfg.model.fusion == best["params"]["model.fusion"] and cfg.train.output_dir == str(out / "best")
    assert cfg.train.save_checkpoints is True  # the base config's own setting, not the trials'
    assert os.path.getsize(out / "optimization_history.png") > 0
    assert json.load(open(out / "study_summary.json"))["direction"] == "maximize"
    # resume from the storage: 2 more trials, the first three unchanged
    assert tune_main(["--config", str(tmp_path / "cfg.yaml"), "--space", str(tmp_path / "space.yaml"),
                      "--trials", "5", "--output", str(out), "--pruner", "none", "--startup-trials", "1"]) == 0
    study = optuna.load_study(study_name="cfg", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 5 and study.trials[0].params == trials_params(trials, 0)
    assert len(pd.read_csv(out / "trials.csv")) == 5


def trials_params(frame, i):
    return {k[len("params_"):]: (v.item() if hasattr(v, "item") else v) for k, v in frame.iloc[i].items()
            if k.startswith("params_")}


def test_pruning_stops_trials_through_the_trainer_callback(tmp_path, tiny_text_dir):
    base = _write(tmp_path, tiny_text_dir)
    out = tmp_path / "pruned"
    settings = SearchSettings(str(out), 2, pruner=optuna.pruners.ThresholdPruner(lower=1.01), seed=0,
                              enqueue=[{"train.head_lr": 0.01, "model.fusion": "concat", "model.fusion_dim": 16}] * 2)
    summary = tune(base, read_space(str(tmp_path / "space.yaml"), base), settings)
    assert summary["trials"] == {"pruned": 2} and "best_trial" not in summary
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{out / 'study.db'}")
    assert all(list(t.intermediate_values) == [1] for t in study.trials)  # stopped after epoch 1 of 2
    assert json.load(open(out / "study_summary.json"))["trials"] == {"pruned": 2}

    class Trial:  # the callback reports the epoch's metric and raises only when the pruner says so
        def __init__(self, prune):
            self.prune, self.reported = prune, []

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return self.prune

    keep = Trial(False)
    PruningCallback(keep, "macro_f1")(None, {"epoch": 3, "macro_f1": 0.5})
    assert keep.reported == [(3, 0.5)]
    with pytest.raises(optuna.TrialPruned, match="epoch 2"):
        PruningCallback(Trial(True), "macro_f1")(None, {"epoch": 2, "macro_f1": 0.1})


def _study(values_and_losses):
    """An in-memory study of complete trials with these (objective value, validation loss) pairs."""
    study = optuna.create_study(direction="maximize")
    dist = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    for k, (value, loss) in enumerate(values_and_losses):
        study.add_trial(optuna.trial.create_trial(params={"train.head_lr": 1e-3 * (k + 1)},
                                                  distributions={"train.head_lr": dist}, value=value,
                                                  user_attrs={"validation_loss": loss}))
    return study


def test_all_trials_tied_warn_and_draw_no_importances(tmp_path):
    logged = []
    settings = SearchSettings(str(tmp_path), 4, log=logged.append)
    study = _study([(1.0, 0.50), (1.0, 0.08), (1.0, 0.30), (1.0, None)])
    summary = write_outputs(study, {}, "macro_f1", "maximize", "sqlite://", settings, 1.0, 1.0)
    assert summary["warning"].startswith("all 4 complete trials scored the same validation macro_f1 (1): the "
                                         "search could not tell the settings apart, so parameter importances are "
                                         "meaningless")
    assert logged == [f"warning: {summary['warning']}"]
    assert summary["plots"]["param_importances"].startswith("not drawn: all 4 complete trials")
    assert not (tmp_path / "param_importances.png").exists()
    assert (tmp_path / "optimization_history.png").exists()
    assert summary["best_trial"]["number"] == 1  # the tie goes to the lowest validation loss
    assert load_config(str(tmp_path / "best_config.yaml")).train.head_lr == pytest.approx(2e-3)


def test_distinct_trials_draw_importances_and_keep_the_best_value(tmp_path):
    study = _study([(0.7, 0.1), (0.9, 0.5), (0.8, 0.2), (0.6, 0.3)])
    summary = write_outputs(study, {}, "macro_f1", "maximize", "sqlite://", SearchSettings(str(tmp_path), 4,
                                                                                          log=lambda _: None), 1.0, 1.0)
    assert "warning" not in summary and summary["best_trial"]["number"] == 1
    assert summary["plots"]["param_importances"].endswith("param_importances.png")
    assert best_trial(_study([(0.2, 0.9), (0.2, 0.1)]).trials, "minimize").number == 1
    assert tie_warning(_study([(0.5, 0.1)]).trials, "macro_f1") is None  # one trial: nothing to compare
