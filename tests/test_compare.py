"""`make compare`: every arm as a run of our own CLIs under one budget, and a report made only from their files."""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_script, toy_reviews
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bertgpt.cli import compose
from bertgpt.errors import UserError
from bertgpt.experiments.compare import ARMS, Run, finished, leaves, precision, settings_since
from bertgpt.experiments.compare_report import read_events, write_report
from bertgpt.experiments.stats import t_interval
from bertgpt.host import best_precision

HAS_PRETRAIN = (ROOT / "src" / "pretrain.py").exists()
PRACTICAL = ["bert", "bert_scratch", "gpt", "gpt_scratch"]
CONTROLLED = ["bert_mlm", "gpt_clm", "bert_random", "gpt_random"]
SMOKE_ARMS = list(OmegaConf.load(ROOT / "conf" / "compare.yaml").compare.scales.smoke.arms)
# The smoke scale, shrunk to the toy data: 32 reviews in batches of 8, every step logged.
TINY = ["compare.scale=smoke", "compare.train_size=32", "compare.val_size=16", "compare.curve_sizes=[16]", "compare.batch_size=8",
        "compare.max_length=32", "compare.log_every_n_steps=1", "compare.pretrain.steps=4", "compare.pretrain.docs=100", "compare.heartbeat_s=2",
        "compare.probe_train_size=32", "compare.direction_train_size=32", "compare.decoder_sizes=[32]", "compare.curve_min_samples=32"]
NUMBER_COLUMNS = {
    # column -> (metrics.json key, scale): the cell must be that metric, as printed
    "params": ("params/total", 1), "trainable": ("params/trainable", 1), "train samples/s": ("train/samples_per_sec", 1),
    "tokens/s": ("train/tokens_per_sec", 1), "peak memory (MiB)": ("train/peak_memory_mb", 1), "held-out acc": ("test/acc", 100),
    "F1": ("test/f1", 1), "val loss": ("val/loss", 1), "val ppl": ("val/ppl", 1), "token acc": ("val/token_acc", 100),
}


def list_override(key: str, values: list[str]) -> str:
    """`key=["a=1","b=2"]`: Hydra parses list elements holding `=` only when quoted."""
    return f"{key}=[" + ",".join(json.dumps(v) for v in values) + "]"


def arm_inputs(arm: str, tiny: dict[str, str], toy_csv: Path, tagged: Path) -> list[str]:
    """The tiny model and toy data an arm reads instead of the bundled ones (the controlled arms' weights are their
    pretraining's export): a prompted decoder needs a chat template (tiny_chat), the others tiny_bert / tiny_gpt2."""
    spec = ARMS[arm]
    decoder = spec.decoder or spec.model.startswith("gpt")
    model = tiny["chat"] if spec.script == "prompt" else tiny["gpt2"] if decoder else tiny["bert"]
    weights = [] if spec.objective else [("checkpoint=" if spec.script != "train" else "model.net.checkpoint=") + model]
    return [*weights, f"data.path={tagged if spec.task == 'pos' else toy_csv}"]


def tiny_overrides(tiny: dict[str, str], toy_csv: Path, tmp_path: Path, arms: list[str]) -> list[str]:
    """The smoke scale on the tiny fixtures: each arm's tiny model and toy data, a tiny text file and model for
    pretraining (whose vocabulary is the bundled BERT's)."""
    from test_tagging import tagged_sentences, write_columns

    text = tmp_path / "unlabeled.txt"
    text.write_text("\n".join(toy_reviews(200, seed=3)[0]) + "\n")
    tagged = write_columns(tmp_path / "tagged.txt", tagged_sentences(400, seed=2))
    pretrain = [f"data.path={text}", "data.exclude_held_out=false", "data.block_size=32", "data.batch_size=8", "model.n_layer=1",
                "model.n_head=2", "model.n_embd=32", "model.n_inner=64", "trainer.log_every_n_steps=1"]
    return [
        f"compare.arms=[{','.join(arms)}]", *TINY, f"hydra.run.dir={tmp_path / 'compare'}", f"compare.report_dir={tmp_path / 'reports'}",
        list_override("compare.pretrain.overrides", pretrain), "compare.scales.smoke.pos.train_size=32", "compare.scales.smoke.pos.val_size=8", "compare.scales.smoke.pos.test_size=16",
        *(list_override(f"++compare.arm_overrides.{arm}", arm_inputs(arm, tiny, toy_csv, tagged)) for arm in arms),
    ]


def parse_tables(text: str) -> list[list[dict[str, str]]]:
    """The Markdown tables of a report, each as rows of {column: cell}."""
    tables, rows, columns = [], [], None
    for line in text.splitlines() + [""]:
        if not line.startswith("|"):
            if columns is not None:
                tables.append(rows)
            rows, columns = [], None
        elif not re.fullmatch(r"\|(---\|)+", line):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if columns is None:
                columns = cells
            else:
                rows.append(dict(zip(columns, cells)))
    return tables


def as_number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%"))


def check_tables(report: Path, folder: Path) -> list[list[dict[str, str]]]:
    """Every row names a run of `folder`, every other cell is a number, and each metric cell is that run's metric."""
    tables = parse_tables(report.read_text())
    manifest = json.loads((folder / "compare.json").read_text())
    for table in tables:
        for row in table:
            if "run" not in row:  # a table of arms (the intervals), not of runs
                continue
            name = row["run"].strip("`")
            metrics = json.loads((folder / name / "metrics.json").read_text())
            for column, cell in row.items():
                if column in ("run", "model", "weights", "layers x width", "task", "method", "pooling", "max at"):  # names, not figures
                    continue
                value = as_number(cell)  # "n/a" or an empty cell fails here
                if column in NUMBER_COLUMNS:
                    key, scale = NUMBER_COLUMNS[column]
                    assert value == pytest.approx(scale * metrics[key], rel=5e-3, abs=6e-3), (name, column)
                elif column == "wall time (s)":
                    assert value == pytest.approx(manifest["runs"][name]["wall_s"], rel=5e-3, abs=6e-3)
    return tables


def check_images(report: Path) -> list[str]:
    names = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report.read_text())
    for name in names:
        with Image.open(report.parent / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100
    return names


@pytest.fixture(scope="module")
def tiny(tiny_bert, tiny_gpt2, tiny_chat) -> dict[str, str]:
    return {"bert": tiny_bert, "gpt2": tiny_gpt2, "chat": tiny_chat}


@pytest.fixture(scope="module")
def tiny_compare(tiny, tmp_path_factory):
    """The smoke scale's arms (those whose script is here) plus the learning curve's decoder and two direction arms,
    on the tiny fixtures: the tests below read what it left."""
    from conftest import write_csv

    tmp_path = tmp_path_factory.mktemp("compare")
    toy_csv = write_csv(tmp_path / "toy.csv", *toy_reviews(400))
    scripts = {p.stem for p in (ROOT / "src").glob("*.py")}
    arms = [a for a in SMOKE_ARMS + ["gpt", "bert_bi_cls", "bert_causal_last"] if ARMS[a].script in scripts]
    started = time.perf_counter()
    result = run_script("compare", *tiny_overrides(tiny, toy_csv, tmp_path, arms))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp_path / "compare", tmp_path / "reports" / "compare.md", arms, result, time.perf_counter() - started


def run_names(folder: Path) -> list[str]:
    return list(json.loads((folder / "compare.json").read_text())["runs"])


@pytest.mark.slow
def test_smoke_compare_reports_every_run_from_its_files(tiny_compare):
    folder, report, arms, result, _ = tiny_compare
    text = report.read_text()
    first = text.splitlines()[:2]
    assert first[0].startswith("Generated by `python src/compare.py 'compare.arms=[") and re.search(r"on \d{4}-\d\d-\d\dT", first[0])
    assert re.search(r"Machine: CPU .+, (no GPU|GPU .+), \d+ torch threads, torch \d", first[1])
    assert "Scale `smoke`" in text and "**Incomplete:**" not in text
    tables = check_tables(report, folder)
    intervals = next(t for t in tables if t and "95% from" in t[0])
    names = run_names(folder)
    assert "bert_n16" in names and {"bert", "gpt", "pos_bert_bi", "pos_bert_causal"} <= set(names)
    # Every run left predictions.json: an interval per arm, on the same 16 reviews or the same POS test words.
    assert sorted(row["arm"].strip("`") for row in intervals) == sorted(names)
    for row in intervals:
        name = row["arm"].strip("`")
        saved = json.loads((folder / name / "predictions.json").read_text())
        assert row["held-out items"] == (f"{len(saved['label']):,} words" if name.startswith("pos_") else "16 reviews")
        acc = json.loads((folder / name / "metrics.json").read_text())["test/acc"]
        assert as_number(row["held-out acc"]) == pytest.approx(100 * acc, abs=6e-3)
        assert as_number(row["95% from"]) <= as_number(row["held-out acc"]) <= as_number(row["95% to"])
    verdicts = re.findall(r"paired bootstrap over [\d,]+ (?:reviews|words in [\d,]+ sentences): 95% interval \[[-+]\d+\.\d\d, [-+]\d+\.\d\d\] points, \*\*([^*]+)\*\*", text)
    assert "what seeing the right context buys POS tagging: `pos_bert_bi`" in text
    assert "decoder vs BERT, bundled weights, both fine-tuned on 32 reviews: `gpt`" in text
    assert len(verdicts) >= 3 and set(verdicts) <= {"no difference found", *(f"`{a}` better" for a in names)}
    images = check_images(report)
    assert "compare_curve.png" in images and "compare_practical_loss.png" in images and "compare_direction_loss.png" in images
    for name in names:  # each run's output streamed to its own log, its progress to the console
        script = json.loads((folder / "compare.json").read_text())["runs"][name]["script"]
        assert (folder / name / "output.log").read_text().startswith(f"$ python src/{script}.py ")
        assert f"] {name} (" in result.stdout + result.stderr
    summary = EventAccumulator(str(folder / "summary"), size_guidance={"images": 0, "tensors": 0})
    summary.Reload()
    assert "compare/curve" in summary.Tags()["images"]
    assert any(tag.startswith("compare/report") for tag in summary.Tags()["tensors"])  # the text plugin's tag


@pytest.mark.slow
def test_every_sentiment_fine_tune_of_one_size_ran_under_one_budget(tiny_compare):
    folder, _, _, _, _ = tiny_compare
    manifest = json.loads((folder / "compare.json").read_text())
    budgets = {}
    for name, record in manifest["runs"].items():
        if record["script"] != "train" or record["task"] != "sentiment":
            continue
        args = shlex.split(record["command"])
        budget = tuple(a for a in args if a.startswith(("data.", "model.lr", "model.warmup", "trainer.", "++trainer.limit", "seed="))
                       and not a.startswith(("data.path", "data.train_size", "trainer.max_epochs")))
        budgets.setdefault(budget, []).append(name)
        config = (folder / name / ".hydra" / "config.yaml").read_text()
        assert f"train_size: {record['train_size']}" in config and "batch_size: 8" in config and "max_length: 32" in config
    assert len(budgets) == 1, budgets


@pytest.mark.slow
def test_a_repeated_compare_resumes_and_runs_nothing_again(tiny_compare, tiny, tmp_path):
    folder, report, arms, _, _ = tiny_compare
    before = {name: (folder / name / "metrics.json").stat().st_mtime_ns for name in run_names(folder)}
    toy_csv = folder.parent / "toy.csv"
    overrides = [o for o in tiny_overrides(tiny, toy_csv, folder.parent, arms) if not o.startswith("compare.report_dir=")]
    result = run_script("compare", *overrides, f"compare.report_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{len(before)} of {len(before)} runs finished there already" in result.stdout + result.stderr
    assert {name: (folder / name / "metrics.json").stat().st_mtime_ns for name in run_names(folder)} == before
    assert parse_tables((tmp_path / "compare.md").read_text()) == parse_tables(report.read_text())


@pytest.mark.slow
def test_a_finished_run_counts_as_done_only_while_conf_gives_its_command_the_same_settings(tiny_compare, tmp_path, caplog):
    """A default changed in conf/ since a run (hidden dropout's, say) makes the same command run other settings: a
    resumed compare runs it again, naming the setting. Checked on a copy of one run, the fixture's folder untouched."""
    folder, *_ = tiny_compare
    record = json.loads((folder / "compare.json").read_text())["runs"]["probe_bert"]
    args = [a for a in shlex.split(record["command"])[2:] if not a.startswith("hydra.run.dir=")]
    run = Run("probe_bert", record["script"], args, record["part"], record["description"])
    shutil.copytree(folder / "probe_bert", tmp_path / "probe_bert")
    before = {"probe_bert": {**record, "command": run.command(tmp_path / "probe_bert")}}
    assert finished(tmp_path, run, before) == before["probe_bert"]
    saved = OmegaConf.load(tmp_path / "probe_bert" / ".hydra" / "config.yaml")
    OmegaConf.update(saved, "probe.C", 0.25)
    OmegaConf.update(saved, "probe.retired_option", 3, force_add=True)
    OmegaConf.save(saved, tmp_path / "probe_bert" / ".hydra" / "config.yaml")
    with caplog.at_level(logging.INFO, logger="bertgpt.experiments.compare"):
        assert finished(tmp_path, run, before) is None
    assert "conf/ changed since probe_bert ran (probe.C: 0.25 then, 1.0 now; probe.retired_option: 3 then, (unset) now): it runs again." in caplog.text


@pytest.mark.slow
def test_report_only_rebuilds_the_same_tables(tiny_compare, tmp_path):
    folder, report, _, _, _ = tiny_compare
    result = run_script("compare", f"report_only={folder}", f"compare.report_dir={tmp_path}", f"paths.log_dir={tmp_path / 'logs'}")
    assert result.returncode == 0, result.stderr[-3000:]
    again = (tmp_path / "compare.md").read_text()
    assert "Report re-generated from those files by `python src/compare.py report_only=" in again
    assert parse_tables(again) == parse_tables(report.read_text())
    assert check_images(tmp_path / "compare.md")
    assert not (tmp_path / "logs" / "compare").exists() or not any((tmp_path / "logs" / "compare").rglob("*.json"))


@pytest.mark.slow
def test_a_run_reproduces_with_its_own_command_and_a_changed_result_is_caught(tiny_compare, tmp_path):
    folder, *_ = tiny_compare
    result = run_script("compare", f"reproduce={folder / 'pos_bert_bi'}", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert re.search(r"pos_bert_bi reproduced: predictions\.json:prediction, test/acc, .*test/f1.* identical \(\d+ predictions\)", result.stdout)
    record = json.loads((folder / "reproduced" / "pos_bert_bi" / "reproduced.json").read_text())
    assert record["restored"] == []  # conf/ is what the run was composed from: nothing to restore
    assert record["identical"] and record["items"] > 0 and record["first"] == record["again"] and 0 < record["first"]["test/acc"] < 1
    text = write_report(folder, tmp_path / "reports").read_text()
    assert re.search(r"- `pos_bert_bi`, run again on .* test/acc 0\.\d{4} then 0\.\d{4}.*predictions: \*\*identical\*\*\.", text)
    # A result that is not what the command gives: the re-run says so, naming the metric.
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("reproduced"))
    metrics = json.loads((copy / "pos_bert_bi" / "metrics.json").read_text())
    (copy / "pos_bert_bi" / "metrics.json").write_text(json.dumps({**metrics, "test/acc": metrics["test/acc"] / 2}))
    result = run_script("compare", f"reproduce={copy / 'pos_bert_bi'}", f"paths.log_dir={tmp_path}")
    assert result.returncode == 2 and result.stderr.strip().startswith("error: pos_bert_bi did not reproduce: test/acc: "), result.stderr[-2000:]
    assert not json.loads((copy / "reproduced" / "pos_bert_bi" / "reproduced.json").read_text())["identical"]


@pytest.mark.slow
def test_reproduce_restores_the_settings_a_run_had_where_conf_changed_since(tiny_compare, tmp_path):
    folder, *_ = tiny_compare
    run = tmp_path / "pos_bert_bi"
    shutil.copytree(folder / "pos_bert_bi" / ".hydra", run / ".hydra")
    command = json.loads((folder / "compare.json").read_text())["runs"]["pos_bert_bi"]["command"]
    args = [a for a in shlex.split(command)[2:] if not a.startswith("hydra.run.dir=")]
    assert settings_since(run, args) == []
    # As if conf/'s defaults had changed since the run: its saved config holds other values than its command gives today.
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    changed = {"model.lr": 3e-05, "model.net.dropout": 0.2, "model.lora.target_modules": ["query", "value"], "task_name": "it's, a {test} = x"}
    assert all(OmegaConf.select(saved, key) != value for key, value in changed.items())
    for key, value in changed.items():
        OmegaConf.update(saved, key, value)
    OmegaConf.save(saved, run / ".hydra" / "config.yaml")
    restored = settings_since(run, args)
    assert sorted(r.split("=", 1)[0] for r in restored) == sorted(f"++{key}" for key in changed)
    again = leaves(OmegaConf.to_container(compose("train", args + restored), resolve=False))
    assert again == leaves(OmegaConf.to_container(saved, resolve=False))
    (run / ".hydra" / "hydra.yaml").unlink()  # a folder that kept no Hydra record: today's defaults, said in the log
    assert settings_since(run, args) == []


def test_a_failing_arm_stops_the_compare_naming_it_and_leaves_no_report(tiny, toy_csv, tmp_path):
    overrides = tiny_overrides(tiny, toy_csv, tmp_path, ["bert", "gpt"])
    broken = list_override("++compare.arm_overrides.bert", ["model.net.checkpoint=" + tiny["bert"], f"data.path={toy_csv}", "data.max_length=4"])
    result = run_script("compare", *overrides, broken)
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: arm bert failed (exit 2)") and "data.max_length=4 is below 8" in error
    log = Path(error.split("Its log: ")[1])
    assert log == tmp_path / "compare" / "bert" / "output.log" and "data.max_length=4" in log.read_text()
    assert not (tmp_path / "compare" / "gpt").exists()  # it stopped at the failure
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())
    assert json.loads((tmp_path / "compare" / "compare.json").read_text())["runs"]["bert"]["failed"]


@pytest.mark.parametrize("override, message", [
    ("compare.arms=[bert,bret]", "error: compare.arms=[bert,bret]: unknown bret. Choose from bert, bert_scratch"),
    ("compare.arms=[]", "error: compare.arms=[]: empty."),
    ("compare.seeds=[1,x]", "error: compare.seeds=[1, 'x']: seeds are integers"),
    ("report_only=/nonexistent", "error: report_only=/nonexistent: not a compare folder (no compare.json)."),
    ("reproduce=/nonexistent", "error: reproduce=/nonexistent: not a finished run of a compare"),
    ("reproduce=", "error: reproduce= names no folder: give one (reproduce=logs/compare/default/bert_seed2024)"),  # make reproduce without RUN=
    ("report_only=", "error: report_only= names no folder"),
    ("compare.shots=[0]", "error: compare.shots=[0]: the k of k-shot prompting, a positive integer or a list of them"),
    ("compare.pretrain.checkpoints=[100,400]", "error: compare.pretrain.checkpoints=[100, 400]: distinct steps between 0 and compare.pretrain.steps=400"),
])
def test_bad_options_are_one_error_line_and_leave_nothing(override, message, tmp_path):
    result = run_script("compare", override, f"paths.log_dir={tmp_path}", f"compare.report_dir={tmp_path / 'reports'}")
    assert result.returncode == 2 and result.stderr.strip().startswith(message), result.stderr[-2000:]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_full_scale_wants_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: compare.scale=full would start a whole-data compare")
    result = run_script("compare", "compare.scale=full", f"paths.log_dir={tmp_path}")
    assert result.returncode == 2 and "compare.scale=full" in result.stderr and "wants a GPU" in result.stderr


def dry_run(tmp_path: Path, *overrides: str) -> dict[str, str]:
    result = run_script("compare", "compare.dry_run=true", f"paths.log_dir={tmp_path}", *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # a dry run leaves no folder
    return dict(line.split(": ", 1) for line in result.stdout.splitlines() if re.match(r"\w+: python src/", line))


def test_the_default_scale_plans_each_arm_with_its_seeds_and_sizes(tmp_path):
    commands = dry_run(tmp_path)
    seeds = (2024, 2025, 2026)
    assert {f"bert_seed{s}" for s in seeds} | {f"bert_n100_seed{s}" for s in seeds} | {f"pos_bert_causal_seed{s}" for s in seeds} <= set(commands)
    assert "gpt" in commands and not any(name.startswith("gpt_seed") for name in commands)  # the decoder: one seed, 500 reviews
    assert "data.train_size=500 " in commands["gpt"] and "data.train_size=2000 " in commands["bert_seed2024"]
    assert "data.train_size=100 " in commands["bert_n100_seed2024"] and "trainer.max_epochs=5 " in commands["bert_n100_seed2024"]
    assert all("data.val_size=500 " in c for n, c in commands.items() if not n.startswith(("pos_", "probe_bert_pos", "probe_gpt_pos")))
    # The attention-direction arms differ only in the mask and the pooled token.
    def without(command, *keys):
        return [a for a in shlex.split(command) if not a.startswith(keys)]
    cls, last = commands["bert_bi_cls_seed2024"], commands["bert_causal_last_seed2024"]
    assert "model.net.causal=false model.net.pooling=cls" in cls and "model.net.causal=true model.net.pooling=last" in last
    assert without(cls, "model.net.", "hydra.run.dir") == without(last, "model.net.", "hydra.run.dir")
    assert commands["gpt_zeroshot"].startswith("python src/prompt.py checkpoint=smollm2-135m method=chat shots=0 ")
    assert "shots=4 demo_tokens=64" in commands["gpt_kshot"] and commands["probe_gpt_pos"].startswith("python src/probe.py checkpoint=smollm2-135m task=pos")
    assert str(tmp_path / "compare" / "default" / "gpt") in commands["gpt"]  # one folder per scale: resumable


@pytest.mark.parametrize("overrides, expected", [
    ([], None),
    (["trainer.precision=32-true"], "32-true"),
    (["++trainer.precision=16-mixed", "seed=1"], "16-mixed"),  # Hydra's force-add form sets it as well
    (["trainer.precision=32-true", "+trainer.precision=bf16-mixed"], "bf16-mixed"),  # the last one wins, as in Hydra
    (["trainer.precision=32-true", "~trainer.precision"], None),  # deleted: the config's own choice again
    (["trainer.precision_plugin=x"], None),  # another key that merely starts the same
])
def test_a_fine_tune_reports_the_precision_its_overrides_give_it(overrides, expected):
    assert precision(Run("arm", "train", overrides, "practical", "")) == (expected or best_precision())
    assert precision(Run("arm", "probe", overrides, "practical", "")) is None  # only fine-tunes train in a precision


def test_controlled_arms_follow_their_pretraining_and_the_controls_take_random_weights(tmp_path):
    commands = dry_run(tmp_path, f"compare.arms=[{','.join(CONTROLLED)},bert_mlm_cloze]", "compare.pretrain.steps=7", "compare.pretrain.checkpoints=[3]",
                       "compare.seeds=[1]")
    assert list(commands) == ["pretrain_mlm", "bert_mlm_step3", "bert_mlm", "pretrain_clm", "gpt_clm_step3", "gpt_clm", "bert_random", "gpt_random",
                              "bert_mlm_cloze"]
    for objective in ("mlm", "clm"):
        args = shlex.split(commands[f"pretrain_{objective}"])
        assert args[2:6] == [f"objective={objective}", "trainer.max_steps=7", "data.max_docs=null", "export_steps=[3]"]
    assert "pretrain_mlm/export " in commands["bert_mlm"] and "pretrained=false" not in commands["bert_mlm"]
    # Weights from scratch or nearly: the controlled arms fine-tune at their own lr, the others at compare.lr.
    assert " model.lr=0.0005 " in commands["bert_random"] and " model.lr=0.0005 " in commands["gpt_clm"]
    assert " model.lr=5e-05 " in dry_run(tmp_path, "compare.arms=[bert]", "compare.seeds=[1]", "compare.curve_sizes=[]")["bert"]
    # The checkpoint's fine-tune differs from the final export's in its weights only.
    assert commands["bert_mlm_step3"].replace("export_step3", "export").replace("bert_mlm_step3", "bert_mlm") == commands["bert_mlm"]
    assert "pretrain_clm/export model.net.pretrained=false " in commands["gpt_random"]
    assert commands["bert_mlm_cloze"].startswith("python src/prompt.py checkpoint=") and "pretrain_mlm/export method=cloze" in commands["bert_mlm_cloze"]


def test_every_planned_command_composes_with_the_configs(tmp_path, monkeypatch):
    """Each dry-run command's overrides, the defaults included, compose into its script's config (a key missing from
    a config would otherwise fail only when that arm starts, maybe an hour into a compare)."""
    from hydra import compose, initialize_config_dir

    from bertgpt import pipeline  # noqa: F401  (registers the config resolvers)

    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    commands = dry_run(tmp_path, f"compare.arms=[{','.join(ARMS)}]", "compare.seeds=[1]")
    scripts = {p.stem for p in (ROOT / "src").glob("*.py")}
    # the curve's two extra sizes for bert, two pretrainings, the four pretrained controlled fine-tunes at two checkpoints
    assert len(commands) == len(ARMS) + 2 + 2 + 4 * 2
    for command in commands.values():
        script, *overrides = shlex.split(command)[1:]
        if Path(script).stem not in scripts:
            continue
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(Path(script).stem, overrides=[o for o in overrides if not o.startswith("hydra.")])
        if Path(script).stem == "train":
            assert cfg.callbacks.model_checkpoint.save_weights_only is True and cfg.data.batch_size == 16
            # every fine-tune keeps its checkpoint's hidden dropout, as the recorded compares ran (model=bert's 0.0 is newer)
            assert cfg.model.net.get("dropout") is None, command


def test_the_smoke_scale_is_small(tmp_path):
    commands = dry_run(tmp_path, "compare.scale=smoke")
    assert len(commands) <= 8 and all("data.max_length=64" in c for c in commands.values())
    assert all(re.search(r"data\.(val|test)_size=32 ", c) for c in commands.values())


# -- the report writer alone, on synthetic runs ------------------------------------------------------------------


def fake_run(folder: Path, name: str, metrics: dict, curves: dict[str, list[float]]) -> None:
    """A run folder as src/train.py or src/pretrain.py leaves it: metrics.json and TensorBoard scalars, one a second."""
    from torch.utils.tensorboard import SummaryWriter

    run = folder / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics))
    writer = SummaryWriter(log_dir=str(run / "tensorboard" / "version_0"))
    start = time.time()
    for tag, values in curves.items():
        for step, value in enumerate(values):
            writer.add_scalar(tag, value, step * 10, walltime=start + step)
    writer.close()


FAKE_BUDGET = dict(scale="smoke", train_size=32, val_size=16, curve_sizes=[16], decoder_sizes=[32], curve_min_samples=32, direction_train_size=32,
                   probe_train_size=32, batch_size=8, lr=5e-5, warmup_ratio=0.1, epochs=1, max_length=32, shots=2, demo_tokens=64, validate=False,
                   val_check_interval=0.5, log_every_n_steps=1, pos={"train_size": 32, "val_size": 8, "test_size": 16}, pretrain_steps=20,
                   pretrain_docs=None, seeds=[1], decoder_seeds=1, seed=1)


def fake_compare(folder: Path) -> dict:
    runs, expected = {}, {}
    for i, name in enumerate(PRACTICAL + CONTROLLED):
        metrics = {"params/total": 1000 * (i + 1), "params/trainable": 900 * (i + 1), "train/samples_per_sec": 10.5 + i,
                   "train/tokens_per_sec": 1234.0 + i, "train/peak_memory_mb": 512.0 + i, "test/acc": 0.6 + i / 100, "test/f1": 0.55 + i / 100}
        fake_run(folder, name, metrics, {"train/loss": [0.7, 0.6, 0.5 - i / 100], "val/acc": [0.5, 0.6 + i / 100], "train/epoch_time_s": [3.0]})
        runs[name] = {"script": "train", "part": ARMS[name].part, "description": ARMS[name].description, "command": f"python src/train.py model={name}",
                      "wall_s": 20.0 + i, "arm": name, "kind": name, "task": "sentiment", "train_size": 32, "finished": "2026-01-02T03:04:05+00:00"}
        expected[name] = metrics
    for objective in ("mlm", "clm"):
        metrics = {"params/total": 5000, "val/loss": 6.5, "val/ppl": 665.1, "val/token_acc": 0.123, "train/samples_per_sec": 40.0,
                   "train/tokens_per_sec": 5120.0, "train/peak_memory_mb": 800.0}
        fake_run(folder, f"pretrain_{objective}", metrics, {"train/loss": [10.0, 8.0, 7.0], "val/loss": [6.5]})
        runs[f"pretrain_{objective}"] = {"script": "pretrain", "part": "pretraining", "description": objective, "objective": objective,
                                         "command": f"python src/pretrain.py objective={objective}", "wall_s": 30.0}
    machine = dict(cpu="Test CPU", cpu_count=2, gpu=None, threads=2, torch="2.x", python="3.x", host="h")
    manifest = {"command": "python src/compare.py compare.arms=[...]", "date": "2026-01-02T03:04:05+00:00", "machine": machine,
                "budget": FAKE_BUDGET, "runs": runs}
    (folder / "compare.json").write_text(json.dumps(manifest))
    return expected


def test_report_writer_on_synthetic_runs(tmp_path):
    folder, reports = tmp_path / "compare", tmp_path / "reports"
    expected = fake_compare(folder)
    (reports).mkdir()
    (reports / "compare_gone_loss.png").write_bytes(b"stale")  # a plot no part of this report makes
    report = write_report(folder, reports)
    text = report.read_text()
    assert text.startswith("Generated by `python src/compare.py compare.arms=[...]` on 2026-01-02T03:04:05+00:00")
    assert "Machine: CPU Test CPU (2 cores), no GPU, 2 torch threads, torch 2.x" in text
    practical, pretraining, controlled = check_tables(report, folder)
    assert [r["run"] for r in practical] == [f"`{a}`" for a in PRACTICAL] and [r["run"] for r in controlled] == [f"`{a}`" for a in CONTROLLED]
    assert [r["steps"] for r in pretraining] == ["20", "20"]  # the last step logged
    assert practical[0]["train time (s)"] == "3.00" and practical[0]["wall time (s)"] == "20.0"
    gain = 100 * (expected["bert_mlm"]["test/acc"] - expected["bert_random"]["test/acc"])
    assert f"what MLM pretraining buys our BERT: `bert_mlm` 64.00% vs `bert_random` 66.00% held-out ({gain:+.2f} points)" in text
    assert sorted(check_images(report)) == sorted(p.name for p in reports.glob("*.png"))  # and the stale one is gone
    assert len(list(reports.iterdir())) == 6  # the report and its five plots, no temporary files
    points = read_events(folder / "bert")["val/acc"]
    assert [step for step, _, _ in points] == [0, 10] and 0 <= points[1][1] - points[0][1] == pytest.approx(1, abs=0.01)


def test_with_validation_the_report_gives_the_time_to_each_accuracy(tmp_path):
    folder, reports = tmp_path / "compare", tmp_path / "reports"
    fake_compare(folder)
    (folder / "bert").rename(folder / "bert_old")
    fake_run(folder, "bert", {"test/acc": 0.87}, {"val/acc": [0.70, 0.86, 0.84, 0.89]})  # validations one second apart
    manifest = json.loads((folder / "compare.json").read_text())
    assert "to 85% (s)" not in write_report(folder, reports).read_text()  # no validation in the budget: no such table
    manifest["budget"]["validate"] = True
    (folder / "compare.json").write_text(json.dumps(manifest))
    text = write_report(folder, reports).read_text()
    table = next(t for t in parse_tables(text) if t and "to 85% (s)" in t[0])
    bert = next(row for row in table if row["run"] == "`bert`")
    assert (bert["validations"], bert["best val acc"], bert["trained on"]) == ("4", "89.00%", "32")
    assert as_number(bert["to 80% (s)"]) == pytest.approx(1, abs=0.05) and bert["to 85% (s)"] == bert["to 80% (s)"]
    assert as_number(bert["to 88% (s)"]) == pytest.approx(3, abs=0.05) and bert["to 90% (s)"] == "not reached"
    gpt = next(row for row in table if row["run"] == "`gpt`")  # val/acc 0.5 then 0.6x: none of the targets
    assert {gpt[f"to {t}% (s)"] for t in (80, 85, 88, 90)} == {"not reached"}


def test_a_report_of_an_unfinished_compare_names_the_runs_still_to_come(tmp_path):
    folder, reports = tmp_path / "compare", tmp_path / "reports"
    fake_compare(folder)
    (folder / "gpt" / "metrics.json").unlink()
    text = write_report(folder, reports).read_text()
    assert "**Incomplete:** 1 planned run(s) had not finished when this report was written: `gpt`." in text
    assert "`gpt`" not in text.split("**Incomplete:**")[1].split("\n", 1)[1]  # no row, no contrast for it
    for name in PRACTICAL + CONTROLLED:
        (folder / name / "metrics.json").unlink(missing_ok=True)
    for objective in ("mlm", "clm"):
        (folder / f"pretrain_{objective}" / "metrics.json").unlink()
    with pytest.raises(UserError, match="no run of this compare has finished yet"):
        write_report(folder, reports)
    assert (reports / "compare.md").read_text() == text  # the old report stays


def fake_predictions(folder: Path, name: str, right: slice, labels: list[int]) -> None:
    """predictions.json for a fake run: right on the reviews `right` selects, wrong on the others; test/acc to match."""
    correct = np.zeros(len(labels), dtype=bool)
    correct[right] = True
    predictions = [y if ok else 1 - y for y, ok in zip(labels, correct)]
    (folder / name / "predictions.json").write_text(json.dumps({"labels": ["negative", "positive"], "label": labels, "prediction": predictions}))
    metrics = json.loads((folder / name / "metrics.json").read_text())
    (folder / name / "metrics.json").write_text(json.dumps({**metrics, "test/acc": correct.mean()}))


def test_report_gives_intervals_and_paired_verdicts_from_the_runs_predictions(tmp_path):
    folder, reports = tmp_path / "compare", tmp_path / "reports"
    fake_compare(folder)
    labels = np.random.default_rng(0).integers(0, 2, 400).tolist()
    fake_predictions(folder, "bert", slice(0, 240), labels)  # 60%
    fake_predictions(folder, "bert_scratch", slice(4, 248), labels)  # 61%: 8 reviews gained, 4 lost, the rest shared
    fake_predictions(folder, "gpt", slice(0, 320), labels)  # 80%: right on all that bert gets, and 80 more
    fake_predictions(folder, "gpt_scratch", slice(0, 240), labels[:-1] + [1 - labels[-1]])  # a different test set
    text = write_report(folder, reports).read_text()
    tables = check_tables(reports / "compare.md", folder)  # the held-out acc column is each run's test/acc
    intervals = {row["arm"].strip("`"): row for row in tables[-1]}
    assert list(intervals) == PRACTICAL  # the controlled arms left no predictions
    assert intervals["bert"]["held-out items"] == "400 reviews" and intervals["bert"]["seeds"] == "1" and intervals["gpt"]["held-out acc"] == "80.00%"
    half = 100 * 1.96 * np.sqrt(0.6 * 0.4 / 400)  # 4.8 points: the normal approximation
    assert as_number(intervals["bert"]["95% from"]) == pytest.approx(60 - half, abs=0.7)
    assert as_number(intervals["bert"]["95% to"]) == pytest.approx(60 + half, abs=0.7)
    assert re.search(r"ours vs the library, BERT \(the same weights\): `bert_scratch` 61.00% vs `bert` 60.00% held-out \(\+1.00 points; paired "
                     r"bootstrap over 400 reviews: 95% interval \[-?\+?\d\.\d\d, \+\d\.\d\d\] points, \*\*no difference found\*\*\)", text)
    assert re.search(r"decoder vs BERT, bundled weights, both fine-tuned on 32 reviews: `gpt` 80.00% vs `bert` 60.00% held-out \(\+20.00 points; "
                     r"paired bootstrap over 400 reviews: 95% interval \[\+1\d\.\d\d, \+2\d\.\d\d\] points, \*\*`gpt` better\*\*\)", text)
    assert "ours vs the library, decoder (the same weights): `gpt_scratch` 60.00% vs `gpt` 80.00% held-out (-20.00 points; not on the same held-out" in text
    assert "A verdict names a side only when its interval excludes 0" in text
    assert "Without per-item predictions:" in text  # the controlled arms have no predictions: the rule of thumb stays for them
    assert write_report(folder, reports).read_text() == text  # seeded: the same files, the same intervals
    assert "compare_curve.png" in check_images(reports / "compare.md")


def test_seeds_run_each_arm_once_per_seed_and_the_report_reads_them_together(tmp_path):
    commands = dry_run(tmp_path, "compare.seeds=[7,8]", "compare.arms=[bert,bert_mlm]", "compare.curve_sizes=[]", "compare.pretrain.checkpoints=[]")
    assert list(commands) == ["bert_seed7", "bert_seed8", "pretrain_mlm", "bert_mlm_seed7", "bert_mlm_seed8"]
    assert " seed=7 " in commands["bert_seed7"] and " seed=8 " in commands["bert_mlm_seed8"] and " seed=7 " in commands["pretrain_mlm"]
    # The report of such a compare: one row of intervals per arm, over its reviews and seeds.
    folder, reports = tmp_path / "compare", tmp_path / "reports"
    fake_compare(folder)
    manifest = json.loads((folder / "compare.json").read_text())
    labels = np.random.default_rng(1).integers(0, 2, 300).tolist()
    for arm, rights in {"bert": (150, 160, 170), "gpt": (240, 250, 255)}.items():  # 53.33% vs 82.78%, three seeds each
        single = manifest["runs"].pop(arm)
        for seed, right in enumerate(rights):
            shutil.copytree(folder / arm, folder / f"{arm}_seed{seed}")
            fake_predictions(folder, f"{arm}_seed{seed}", slice(0, right), labels)
            manifest["runs"][f"{arm}_seed{seed}"] = {**single, "arm": arm, "seed": seed}
        shutil.rmtree(folder / arm)
    manifest["budget"]["seeds"] = [0, 1, 2]
    (folder / "compare.json").write_text(json.dumps(manifest))
    text = write_report(folder, reports).read_text()
    assert "3 seeds (0, 1, 2)" in text
    intervals = {row["arm"].strip("`"): row for row in parse_tables(text)[-1]}
    bert = intervals["bert"]
    assert bert["seeds"] == "3" and bert["held-out acc"] == "53.33%"  # (150 + 160 + 170) / 900
    spread = t_interval([150 / 300, 160 / 300, 170 / 300])
    assert bert["over seeds alone (t)"] == f"{100 * spread.low:.2f}% to {100 * spread.high:.2f}%"
    assert as_number(bert["95% from"]) < 53.33 - 100 * 1.96 * np.sqrt(0.5333 * 0.4667 / 300) * 0.9  # reviews and seeds: no narrower than reviews alone
    assert re.search(r"decoder vs BERT, bundled weights, both fine-tuned on 32 reviews: `gpt` 82.78% vs `bert` 53.33% held-out \(\+29.44 points; "
                     r"paired bootstrap over 300 reviews and 3 x 3 seeds: 95% interval \[\+2\d\.\d\d, \+3\d\.\d\d\] points, \*\*`gpt` better\*\*\)", text)


def test_the_trend_over_pretraining_pairs_each_checkpoint_with_its_random_init_control(tmp_path):
    folder, reports = tmp_path / "compare", tmp_path / "reports"
    fake_compare(folder)
    manifest = json.loads((folder / "compare.json").read_text())
    labels = np.random.default_rng(2).integers(0, 2, 400).tolist()
    # MLM: 50% at random init, 51% after 10 steps (20 reviews lost, 24 gained: not decided), 75% after 20 (decided); CLM: no gain.
    rights = {("bert_random", 0): slice(0, 200), ("bert_mlm_step10", 10): slice(20, 224), ("bert_mlm", 20): slice(0, 300),
              ("gpt_random", 0): slice(0, 240), ("gpt_clm_step10", 10): slice(0, 240), ("gpt_clm", 20): slice(0, 241)}
    for (name, step), right in rights.items():
        source = name.split("_step")[0]
        if name != source:
            shutil.copytree(folder / source, folder / name)
            manifest["runs"][name] = {**manifest["runs"][source], "arm": name}
        fake_predictions(folder, name, right, labels)
        manifest["runs"][name].update(objective="mlm" if "bert" in name else "clm", pretrained=step > 0, pretrain_step=step)
    manifest["budget"]["pretrain_checkpoints"] = [10]
    (folder / "compare.json").write_text(json.dumps(manifest))
    text = write_report(folder, reports).read_text()
    rows = {row["arm"].strip("`"): row for table in parse_tables(text) if "vs random init (paired, 95%)" in table[0] for row in table}
    assert [rows[n]["steps"] for n in ("bert_random", "bert_mlm_step10", "bert_mlm")] == ["0", "10", "20"]
    assert rows["bert_mlm_step10"]["held-out acc"] == "51.00%" and rows["bert_mlm_step10"]["vs random init (paired, 95%)"].endswith("no difference found")
    assert rows["bert_mlm"]["vs random init (paired, 95%)"].startswith("+25.00 [+2") and rows["bert_mlm"]["vs random init (paired, 95%)"].endswith("pretrained better")
    assert "- sentiment, MLM (our BERT): beats its random-init control from **20 steps** on (the fewest measured)." in text
    assert "- sentiment, CLM (our GPT): does not beat its random-init control by more than the noise at any measured step (up to 20)." in text
    assert "what 10 steps of MLM pretraining buy our BERT: `bert_mlm_step10` 51.00% vs `bert_random` 50.00%" in text
    assert "GPT vs BERT after 10 pretraining steps each: `gpt_clm_step10` 60.00% vs `bert_mlm_step10` 51.00%" in text
    assert "exported also after 10 steps" in text and "compare_trend.png" in check_images(reports / "compare.md")


def test_k_shot_prompts_run_at_each_k_and_each_is_paired_with_zero_shot(tmp_path):
    commands = dry_run(tmp_path, "compare.arms=[gpt_zeroshot,gpt_kshot]", "compare.shots=[1,8]")
    assert list(commands) == ["gpt_zeroshot", "gpt_kshot_k1", "gpt_kshot_k8"]
    assert commands["gpt_kshot_k1"].replace("shots=1", "shots=8").replace("gpt_kshot_k1", "gpt_kshot_k8") == commands["gpt_kshot_k8"]
    folder, reports = tmp_path / "compare", tmp_path / "reports"
    fake_compare(folder)
    manifest = json.loads((folder / "compare.json").read_text())
    labels = np.random.default_rng(3).integers(0, 2, 400).tolist()
    for name, shots, right in (("gpt_zeroshot", 0, slice(0, 240)), ("gpt_kshot_k1", 1, slice(0, 244)), ("gpt_kshot_k8", 8, slice(0, 320))):
        fake_run(folder, name, {"prompt/method": "chat", "prompt/shots": shots, "prompt/positive_rate": 0.5}, {})
        fake_predictions(folder, name, right, labels)
        manifest["runs"][name] = {"script": "prompt", "part": "prompting", "description": "library decoder, prompted", "command": "python src/prompt.py",
                                  "arm": name, "kind": name.rsplit("_k", 1)[0] if "kshot" in name else name, "task": "sentiment", "train_size": 0}
    (folder / "compare.json").write_text(json.dumps(manifest))
    text = write_report(folder, reports).read_text()
    assert "what 1 in-context demonstration buys the prompted decoder: `gpt_kshot_k1` 61.00% vs `gpt_zeroshot` 60.00%" in text
    assert re.search(r"what 8 in-context demonstrations buy the prompted decoder: `gpt_kshot_k8` 80.00% vs `gpt_zeroshot` 60.00% .*\*\*`gpt_kshot_k8` better", text)
    assert [row["shots"] for table in parse_tables(text) if "shots" in table[0] for row in table] == ["0", "1", "8"]
