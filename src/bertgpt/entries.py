"""The commands: `python src/<name>.py` and the console scripts `bertgpt-<name>` (pyproject's [project.scripts])
both run these, so the two behave the same: one config folder, one error policy (`cli`), one argument handling.

    bertgpt-train model=bert trainer.devices=1        # = python src/train.py model=bert trainer.devices=1
    bertgpt-eval ckpt_path=...   bertgpt-predict ckpt_path=... text="..."   bertgpt-export ckpt_path=... out=DIR
    bertgpt-pretrain   bertgpt-compare   bertgpt-attention-maps   bertgpt-probe checkpoint=... task=pos   bertgpt-prompt

The configs come from the checkout's conf/ by absolute path: the scripts work from any folder. Each command
imports what it runs only when it runs, so one command does not pay for the imports of another. Each runs with
mimalloc as its allocator where it is installed (`host.rerun_under_mimalloc`; BERTGPT_ALLOCATOR=glibc keeps glibc's),
predict excepted.
"""

import functools
import sys
from pathlib import Path

from bertgpt import ROOT, host
from bertgpt.errors import UserError, fail


def started_as() -> str | None:
    """The command this process was started to run ("train" for python src/train.py and bertgpt-train), or None
    where other code imports the commands (the tests run the scripts in their own process)."""
    if not sys.argv or sys.orig_argv[-len(sys.argv):] != sys.argv:
        return None
    script = Path(sys.argv[0])
    if script.resolve().parent == ROOT / "src":
        return script.stem
    return script.name.removeprefix("bertgpt-").replace("-", "_") if script.name.startswith("bertgpt-") else None


# Before the imports below, which take seconds: the exec would pay for them twice. A one-sentence predict is mostly
# start-up, and mimalloc's made it slower (docs/performance.md, "The allocator"): it keeps glibc's malloc.
if started_as() not in (None, "predict"):
    try:
        host.rerun_under_mimalloc()
    except UserError as err:
        fail(str(err))

import hydra  # noqa: E402

from bertgpt.cli import cli, verbatim_text_argument  # noqa: E402

CONF = str(ROOT / "conf")


def check_group_options(argv: list[str]) -> None:
    """`model=bret` (any config group given an option it lacks) as one `error:` line and exit 2; Hydra would report
    the missing option over several lines, with exit status 1. Each value of a multirun list is checked; sweep
    expressions (`choice(...)`) and `null` are left to Hydra."""
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        folder = Path(CONF) / key
        if not value or not key.isidentifier() or not folder.is_dir() or "(" in value:
            continue
        choices = sorted(p.stem for p in folder.glob("*.yaml"))
        unknown = [v for v in value.split(",") if v not in choices and v != "null"]
        if unknown:
            which = f" {', '.join(unknown)}" if "," in value else ""  # in a multirun list, name the unknown ones
            fail(f"{arg}: unknown {key}{which}. Choose one of {', '.join(choices)}.")


def checks_group_options(entry):
    """`entry` (a hydra.main function) after `check_group_options` of the command line."""

    @functools.wraps(entry)
    def checked():
        check_group_options(sys.argv[1:])
        return entry()

    return checked


@checks_group_options
@hydra.main(version_base="1.3", config_path=CONF, config_name="train.yaml")
@cli
def train(cfg):
    from bertgpt import pipeline

    return pipeline.train(cfg)


@checks_group_options
@hydra.main(version_base="1.3", config_path=CONF, config_name="eval.yaml")
@cli
def evaluate(cfg):
    from bertgpt import pipeline

    pipeline.evaluate(cfg)


@hydra.main(version_base="1.3", config_path=CONF, config_name="predict.yaml")
@cli
def _predict_with_hydra(cfg):
    from bertgpt.inference import predict as print_predictions

    print_predictions(cfg)


def predict():
    """Start-up is most of a one-sentence predict, so it runs without Lightning or the training pipeline
    (bertgpt.inference) and composes conf/predict.yaml with Hydra's compose API: the same `key=value` overrides,
    without a run folder or log file. A Hydra flag (--help, --cfg job, ...) runs the full `hydra.main`."""
    sys.argv = verbatim_text_argument(sys.argv)  # before Hydra parses it: a review holds commas, quotes, colons
    if any(arg.startswith("-") for arg in sys.argv[1:]):
        return _predict_with_hydra()
    from bertgpt.cli import compose, exit_on_user_error
    from bertgpt.host import keep_freed_memory
    from bertgpt.inference import predict as print_predictions

    keep_freed_memory()
    exit_on_user_error(lambda: print_predictions(compose("predict", sys.argv[1:])))


@checks_group_options
@hydra.main(version_base="1.3", config_path=CONF, config_name="export.yaml")
@cli
def export(cfg):
    from bertgpt.export import export as write_export

    write_export(cfg)


@checks_group_options
@hydra.main(version_base="1.3", config_path=CONF, config_name="pretrain.yaml")
@cli
def pretrain(cfg):
    from bertgpt.experiments import pretrain as pretraining

    return pretraining.pretrain(cfg)


@checks_group_options
@hydra.main(version_base="1.3", config_path=CONF, config_name="compare.yaml")
def compare(cfg):
    from hydra.core.hydra_config import HydraConfig

    from bertgpt.experiments import compare as comparison

    comparison.main(cfg, Path(HydraConfig.get().runtime.output_dir))


@checks_group_options
@hydra.main(version_base="1.3", config_path=CONF, config_name="attention_maps.yaml")
@cli
def _attention_maps(cfg):
    from bertgpt.experiments.attention_maps import main as draw

    draw(cfg)


def attention_maps():
    sys.argv = verbatim_text_argument(sys.argv)
    _attention_maps()


@checks_group_options
@hydra.main(version_base="1.3", config_path=CONF, config_name="probe.yaml")
@cli
def probe(cfg):
    from hydra.core.hydra_config import HydraConfig

    from bertgpt.experiments.probes import main as fit_probes

    return fit_probes(cfg, HydraConfig.get().runtime.choices["task"])



@checks_group_options
@hydra.main(version_base="1.3", config_path=CONF, config_name="prompt.yaml")
@cli
def prompt(cfg):
    from bertgpt.experiments.prompting import main as score_prompts

    return score_prompts(cfg)
