"""Training throughput of `model=bert` against the classic recipe and the Hugging Face Trainer, in one run.

    python bench/bench_train.py [--lengths 128 256] [--steps 16] [--warmup 3] [--compile]
    python bench/bench_train.py --checkpoint bert-base-shape --batch-size 256 --lengths 128 --compile  # on a GPU
    python bench/bench_train.py --model gpt --arms ours --lengths 128 --batch-size 16  # the bundled decoder

Every arm trains the same classifier (the bundled all-MiniLM-L6-v2 unless --checkpoint names another, or --model
another of conf/model/, whose checkpoint it then takes: `--model gpt` is the bundled SmolLM2-135M decoder; with
--random-init only its shape and tokenizer are used, which is all throughput depends on; `bert-base-shape` is
bert-base-uncased's shape, 110M, with the bundled tokenizer, which has its vocabulary) on the same reviews (the first steps x batch of our
training split), with the same batch, AdamW (lr 2e-5, eps 1e-8), gradient clipping at 1.0 and threads:

- classic: the classic recipe's loop: every review padded to max_length, fp32, plain PyTorch;
- hf-trainer: `transformers.Trainer` with its own defaults (random batches padded per batch by
  `DataCollatorWithPadding`) at our precision (bf16 autocast where the CPU has it);
- ours-trainer-settings: ours (below) with the Trainer's settings (random batches, the checkpoint's attention
  and hidden dropout 0.1, transformers' SDPA attention, glibc's default allocator; fused AdamW, the Trainer's default
  since transformers 5): what is left when only the framework differs;
- ours: `src/train.py model=bert`'s defaults (or --model's) through Lightning (length-grouped batches, attention and hidden
  dropout off, matmul attention on a CPU in bf16, freed memory kept for the next step, fused AdamW, same precision);
- ours-compile (--compile): ours with `compile=true`.

The arms run in this order in one process, whatever order --arms names them in: `ours` is the first to keep
freed memory (`bertgpt.host.keep_freed_memory`), a process-wide setting the arms after it inherit.

Each arm's clock runs from its `warmup`-th step to the end of its last, data loading included. Figures:
samples/s, real (non-pad) tokens/s, and utilisation: the FLOPs of the measured steps (counted by torch's
FlopCounterMode on each batch shape) per second, over the GEMM peak of this machine at the precision the arm
trained in (`--override trainer.precision=32-true` times ours in fp32 against the fp32 peak), measured here as a
square matmul (2048 on a CPU, 8192 on a GPU) before the arms and again after them; a reading more than 10% higher
after them replaces the first. Runs on the GPU when there is one.
Results: bench/results/train.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import RESULTS, ROOT, best_of, save

from bertgpt.host import keep_freed_memory
from bertgpt.inference import net_logits
from bertgpt.models.hub import resolve_checkpoint

LR, EPS, CLIP = 2e-5, 1e-8, 1.0
ARMS = ["classic", "hf-trainer", "ours-trainer-settings", "ours", "ours-compile"]  # the order they run in
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
extra_overrides: list[str] = []  # --override


def sync() -> None:
    """Wait for the GPU's queued kernels: its clock is only honest once they have run."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def bert_base_shape() -> str:
    """A folder with bert-base-uncased's config (12 x 768, 110M) and the bundled uncased WordPiece tokenizer
    (the same 30,522-token vocabulary): bert-base's throughput, offline. No weights: use with --random-init."""
    from transformers import BertConfig

    folder = RESULTS / "bert-base-shape"
    if not (folder / "config.json").exists():
        minilm = Path(resolve_checkpoint("all-minilm-l6-v2"))
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            shutil.copy(minilm / name, folder / name)
        BertConfig().save_pretrained(folder)  # the defaults are bert-base-uncased's
    return str(folder)


def ours_net(model: str, checkpoint: str) -> torch.nn.Module:
    """The net our arms train, conf/model/<model> with --override's settings (LoRA adapters included), built by the
    task's LightningModule as `pipeline.train` builds it; untrained, as its weights' values don't change the FLOPs."""
    import hydra

    from bertgpt import cli

    cfg = cli.compose("train", [f"model={model}", f"model.net.checkpoint={checkpoint}", "model.net.pretrained=false", *extra_overrides])
    return hydra.utils.instantiate(cfg.model, labels=["negative", "positive"]).net


def classifier(checkpoint: str, random_init: bool, pad_token_id: int):
    """The library's classifier for `checkpoint`. A decoder's finds each row's last real token by the pad id, which
    a decoder's config may lack (SmolLM2's does): it is the tokenizer's."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_checkpoint(checkpoint)
    config = AutoConfig.from_pretrained(path, num_labels=2, pad_token_id=pad_token_id)
    if random_init:
        return AutoModelForSequenceClassification.from_config(config)
    return AutoModelForSequenceClassification.from_pretrained(path, config=config)


# --- the machine's limit -------------------------------------------------------------------------------------


def gemm_peak(dtype: torch.dtype, repeats: int = 10) -> float:
    """FLOP/s of an n x n matmul at `dtype`, best of `repeats`: the most this machine's GEMM does."""
    n = 8192 if DEVICE.type == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=DEVICE), torch.randn(n, n, dtype=dtype, device=DEVICE)

    def product():
        a @ b
        sync()

    product()  # warm the kernels and the thread pool
    return 2 * n**3 / best_of(product, repeats)


def machine_peaks() -> dict[str, float]:
    """The GEMM peak, FLOP/s, at each precision the CPU (or GPU) computes natively."""
    from bertgpt.host import supports_bf16

    # Without AVX-512 BF16 / AMX a bf16 matmul is emulated: a 2048^3 one did not finish on an AVX2 EPYC
    # (docs/performance.md, "AMD EPYC with AVX2 only"). Such a CPU trains in fp32, so its fp32 peak is the only
    # one that bounds a step.
    peaks = {"fp32": gemm_peak(torch.float32)}
    if supports_bf16():
        peaks["bf16"] = gemm_peak(torch.bfloat16)
    return peaks


def judge_against_the_higher_peak(results: dict, first: dict[str, float], again: dict[str, float]) -> list[str]:
    """A peak is a maximum, and a machine with shared cores runs slower for a while at times (the Zen 4's read half,
    now and then, with nothing else running): a reading after the arms more than 10% above the first one replaces
    it, and every arm judged against that peak has its utilisation recomputed. The JSON's `gemm_peak_gflops` is the
    peak each arm was judged against. Returns a line for each arm whose figure changed."""
    peaks = {name: again[name] if again[name] > 1.1 * value else value for name, value in first.items()}
    results["gemm_peak_gflops"] = {name: round(value / 1e9, 1) for name, value in peaks.items()}
    results["gemm_peak_readings_gflops"] = [{name: round(value / 1e9, 1) for name, value in reading.items()} for reading in (first, again)]
    changed = []
    for length, figures in results["lengths"].items():
        for arm, f in figures["arms"].items():
            name = f.get("peak")
            if name and peaks[name] != first[name]:
                f["utilisation"] = round(f["tflops"] * 1e12 / peaks[name], 3)
                changed.append(f"  {length:>4} {arm:<22} {f['utilisation']:4.0%} of the {name} peak read after the arms")
    return changed


class StepFlops:
    """FLOPs of one forward + backward of `model` at batch shape (B, T), counted once per shape.

    Counted on the math attention kernel, whose matmuls torch's counter sees (it does not count the fused
    CPU kernel): the FLOPs are the model's, whichever kernel runs them. Each arm is counted on the model it trains
    (`classifier` for the library's arms, `ours_net` for ours): a LoRA net's frozen weights get no gradient, so its
    step does fewer FLOPs than a full fine-tune's and its utilisation counts only those.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model.to(DEVICE)
        self.cache: dict[tuple[int, int], int] = {}

    def __call__(self, shape: tuple[int, int]) -> int:
        if shape not in self.cache:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            from torch.utils.flop_counter import FlopCounterMode

            ids = torch.randint(1000, 2000, shape, device=DEVICE)
            with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
                logits = net_logits(self.model, ids, torch.ones_like(ids))
                F.cross_entropy(logits, torch.zeros(shape[0], dtype=torch.long, device=DEVICE)).backward()
            self.model.zero_grad(set_to_none=True)
            self.cache[shape] = counter.get_total_flops()
        return self.cache[shape]


# --- measuring -----------------------------------------------------------------------------------------------


class Window:
    """The clock and the counts over steps [warmup, warmup + steps): batch i is step i in every arm."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.start = self.end = None
        self.batches: list[tuple[tuple[int, int], torch.Tensor]] = []  # (shape, real tokens), in the order they were built

    def record(self, attention_mask: torch.Tensor) -> None:
        # The count stays a tensor until the end: reading it now would make the CPU wait for the GPU every step.
        self.batches.append((tuple(attention_mask.shape), attention_mask.sum()))

    def step_start(self, step: int) -> None:
        if step == self.warmup:
            sync()
            self.start = time.perf_counter()

    def step_end(self, step: int) -> None:
        if step == self.warmup + self.steps - 1:
            sync()
            self.end = time.perf_counter()

    def figures(self, flops: StepFlops, peak: float | None) -> dict:
        assert self.start is not None and self.end is not None, "the run ended before its measured window"
        seconds = self.end - self.start
        measured = self.batches[self.warmup : self.warmup + self.steps]
        samples = sum(shape[0] for shape, _ in measured)
        tokens = sum(int(real) for _, real in measured)
        padded = sum(shape[0] * shape[1] for shape, _ in measured)
        achieved = sum(flops(shape) for shape, _ in measured) / seconds
        return {
            "samples_per_sec": round(samples / seconds, 2), "tokens_per_sec": round(tokens / seconds, 1),
            "padding": round(1 - tokens / padded, 3), "step_ms": round(1000 * seconds / self.steps, 1),
            "tflops": round(achieved / 1e12, 3), "utilisation": round(achieved / peak, 3) if peak else None,
        }


def recording(collate, window: Window):
    def wrapped(items):
        batch = collate(items)
        window.record(batch["attention_mask"])
        return batch

    return wrapped


# --- the arms ------------------------------------------------------------------------------------------------


def reviews(checkpoint: str, max_length: int, count: int):
    """The first `count` reviews of our training split, tokenized by our pipeline (cached): every arm's data."""
    from bertgpt.data.reviews import IMDBDataModule

    datamodule = IMDBDataModule(tokenizer=checkpoint, max_length=max_length, train_size=count)
    datamodule.setup()
    split = datamodule.splits["train"]
    return [split[i] for i in range(len(split))], datamodule.tokenizer


def classic(model, data, tokenizer, max_length: int, window: Window, batch_size: int, seed: int) -> None:
    """The classic recipe: reviews padded to max_length up front, fp32, a plain loop."""
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    ids = torch.full((len(data), max_length), tokenizer.pad_token_id)
    for row, (x, _) in enumerate(data):
        ids[row, : len(x)] = x
    masks = (ids != tokenizer.pad_token_id).long()
    labels = torch.tensor([label for _, label in data])
    loader = DataLoader(TensorDataset(ids, masks, labels), sampler=RandomSampler(ids), batch_size=batch_size)
    model = model.to(DEVICE).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, eps=EPS)
    total = window.warmup + window.steps
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=total)
    for step, batch in enumerate(loader):
        b_ids, b_mask, b_labels = (t.to(DEVICE) for t in batch)
        window.record(b_mask)
        window.step_start(step)
        model.zero_grad()
        loss = model(b_ids, attention_mask=b_mask, labels=b_labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        scheduler.step()
        window.step_end(step)
        if step + 1 == total:
            break


def hf_trainer(model, data, tokenizer, window: Window, batch_size: int, seed: int, bf16: bool) -> None:
    """`transformers.Trainer` as its documentation sets it up for classification, at our precision."""
    import tempfile

    from transformers import (
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            window.step_start(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            window.step_end(state.global_step - 1)

    examples = [{"input_ids": x.tolist(), "attention_mask": [1] * len(x), "labels": label} for x, label in data]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, learning_rate=LR, adam_epsilon=EPS, max_grad_norm=CLIP,
            max_steps=window.warmup + window.steps, lr_scheduler_type="linear", bf16=bf16, use_cpu=not torch.cuda.is_available(),
            seed=seed, report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        )
        collate = recording(DataCollatorWithPadding(tokenizer), window)
        Trainer(model=model, args=args, train_dataset=examples, data_collator=collate, callbacks=[Clock()]).train()


def ours(model_config: str, checkpoint: str, random_init: bool, max_length: int, count: int, window: Window, batch_size: int, seed: int, overrides: list[str], compile: bool, host: bool = True) -> str:
    """`src/train.py model=<model_config>` as configured in conf/, with only the run length and outputs changed.
    `host`: as its entry point does, keep freed memory (`bertgpt.cli.cli`). Returns the precision it trained in."""
    import tempfile

    import hydra
    import lightning as L

    from bertgpt import cli
    from bertgpt.data.reviews import IMDBDataModule

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            window.record(batch["attention_mask"])
            window.step_start(batch_idx)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            window.step_end(batch_idx)
            if profiler is not None and batch_idx == window.warmup:
                profiler.__enter__()
            if profiler is not None and batch_idx == window.warmup + 5:
                sync()
                profiler.__exit__(None, None, None)
                for key in ("self_cpu_time_total", "self_device_time_total"):
                    print(profiler.key_averages().table(sort_by=key, row_limit=25), flush=True)

    profiler = None
    if os.environ.get("BENCH_PROFILE"):
        from torch.profiler import ProfilerActivity, profile

        profiler = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda" else []))

    if host:
        keep_freed_memory()
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    with tempfile.TemporaryDirectory() as out:
        cfg = cli.compose("train", [
            f"model={model_config}", f"model.net.checkpoint={checkpoint}", f"model.net.pretrained={not random_init}",
            f"data.max_length={max_length}", f"data.train_size={count}", f"data.batch_size={batch_size}",
            f"seed={seed}", f"paths.output_dir={out}", *overrides, *extra_overrides,
        ])
        L.seed_everything(cfg.seed, verbose=False)
        datamodule: IMDBDataModule = hydra.utils.instantiate(cfg.data)
        model = hydra.utils.instantiate(cfg.model, **datamodule.task_options())  # as pipeline.train builds it
        trainer = hydra.utils.instantiate(
            cfg.trainer, max_steps=window.warmup + window.steps, limit_val_batches=0, num_sanity_val_steps=0, plugins=None,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock()],
        )
        if compile:
            model.net.compile()  # as src/train.py compile=true does
        trainer.fit(model, datamodule=datamodule)
        return str(cfg.trainer.precision)


# --- the run -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bert", help="a config of conf/model/ for our arms, whose checkpoint every arm trains (gpt: the bundled decoder)")
    parser.add_argument("--checkpoint", help="a bundled name or a Hugging Face folder (default: --model's)")
    parser.add_argument("--random-init", action="store_true", help="the checkpoint's shape and tokenizer, random weights")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3, help="steps before the clock starts")
    parser.add_argument("--steps", type=int, default=16, help="steps timed per arm")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--compile", action="store_true", help="also time ours with torch.compile (minutes of compiling on a CPU)")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for our arms, e.g. data.num_workers=0")
    parser.add_argument("--no-cudnn-attention", action="store_true", help="SDPA without its cuDNN backend (GPU)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=ARMS[:4], help="run in this order, whatever the order given")
    parser.add_argument("--glibc-default-malloc", action="store_true", help="ours without keep_freed_memory (the allocator's switch)")
    args = parser.parse_args()
    extra_overrides.extend(args.override)
    if args.no_cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
    import transformers

    transformers.logging.set_verbosity_error()
    from bertgpt.host import best_precision, machine

    precision = best_precision()  # what src/train.py trains in here; the HF Trainer arm is given the same
    bf16 = precision == "bf16-mixed"
    host = machine()
    print(f"CPU: {host['cpu']} ({host['cpu_kind']}; flags {' '.join(host['cpu_flags']) or 'none of note'}); "
          f"torch kernels {host['torch_kernels']}; {host['threads']} threads; GPU {host['gpu'] or 'none'}", flush=True)
    peaks = machine_peaks()
    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"GEMM peak ({where}): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          + (f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s" if "bf16" in peaks else "bf16 not measured (no bf16 in this CPU)")
          + f"; training precision {precision}", flush=True)
    arms = [arm for arm in ARMS if arm in args.arms or (arm == "ours-compile" and args.compile)]
    from bertgpt import cli

    model_config = cli.compose("train", [f"model={args.model}", *extra_overrides]).model
    checkpoint = args.checkpoint or str(model_config.net.checkpoint)
    if checkpoint == "bert-base-shape":
        checkpoint, args.random_init = bert_base_shape(), True
    flops = ours_flops = None
    count = args.batch_size * (args.warmup + args.steps)
    results = {"gemm_peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()}, "batch_size": args.batch_size,
               "model": args.model, "checkpoint": checkpoint, "random_init": args.random_init, "device": str(DEVICE),
               "steps": args.steps, "warmup": args.warmup, "precision": precision, "overrides": args.override,
               "glibc_default_malloc": args.glibc_default_malloc, "lengths": {}}
    for max_length in args.lengths:
        data, tokenizer = reviews(checkpoint, max_length, count)
        flops = flops or StepFlops(classifier(checkpoint, True, tokenizer.pad_token_id))  # the weights' values don't change the FLOPs
        ours_flops = ours_flops or StepFlops(ours_net(args.model, checkpoint))
        figures = {}
        for arm in arms:
            window = Window(args.warmup, args.steps)
            if arm == "classic":
                classic(classifier(checkpoint, args.random_init, tokenizer.pad_token_id), data, tokenizer, max_length, window, args.batch_size, args.seed)
                trained_in = "32-true"
            elif arm == "hf-trainer":
                hf_trainer(classifier(checkpoint, args.random_init, tokenizer.pad_token_id), data, tokenizer, window, args.batch_size, args.seed, bf16)
                trained_in = precision
            else:  # ours-trainer-settings takes the Trainer's settings and glibc's allocator; the Trainer fuses AdamW too
                as_trainer = arm == "ours-trainer-settings"
                settings = ["model.net.attn_dropout=null", "model.net.dropout=null", "data.group_by_length=false",
                            "model.net.attention=sdpa"] if as_trainer else []
                trained_in = ours(args.model, checkpoint, args.random_init, max_length, count, window, args.batch_size, args.seed,
                                  settings, compile=arm == "ours-compile", host=not (as_trainer or args.glibc_default_malloc))
            peak_name = "bf16" if "bf16" in trained_in else "fp32"
            figures[arm] = window.figures(ours_flops if arm.startswith("ours") else flops, peaks.get(peak_name))  # none where bf16 was forced on a CPU without it
            figures[arm]["peak"] = peak_name if peak_name in peaks else None
            f = figures[arm]
            print(f"  {max_length:>4} {arm:<22} {f['samples_per_sec']:7.1f} samples/s {f['tokens_per_sec']:8.0f} tokens/s  "
                  f"pad {f['padding']:4.0%}  {f['tflops'] * 1000:6.0f} GFLOP/s = "
                  + (f"{f['utilisation']:4.0%} of peak" if f["utilisation"] is not None else "no peak measured at its precision"), flush=True)
        ratios = {}
        for base in ("classic", "hf-trainer"):
            if base in figures and "ours" in figures:
                ratios[f"ours_x_{base}"] = round(figures["ours"]["samples_per_sec"] / figures[base]["samples_per_sec"], 2)
        if "ours-trainer-settings" in figures and "hf-trainer" in figures:
            ratios["ours-trainer-settings_x_hf-trainer"] = round(
                figures["ours-trainer-settings"]["samples_per_sec"] / figures["hf-trainer"]["samples_per_sec"], 2)
        print(f"  {max_length:>4} ratios (samples/s): " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()), flush=True)
        results["lengths"][str(max_length)] = {"arms": figures, "ratios": ratios}
    again = machine_peaks()
    changed = judge_against_the_higher_peak(results, peaks, again)
    if changed:
        print(f"GEMM peak read again after the arms: {', '.join(f'{k} {v / 1e9:.0f}' for k, v in again.items())} GFLOP/s, "
              "above the first reading (the machine was slower then); utilisation against it:", *changed, sep="\n", flush=True)
    results["load_average_after"] = round(os.getloadavg()[0], 2)
    save("train", results)


if __name__ == "__main__":
    main()
