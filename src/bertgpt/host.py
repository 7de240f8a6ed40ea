"""Process-wide settings for the host a run is on."""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameters (malloc.h)
# glibc's own settings once its dynamic threshold has risen to its ceiling: blocks over 32 MB mapped afresh, the
# heap trimmed past twice that (mallopt fixes the threshold, so it is set to where glibc would let it rise)
GLIBC_MMAP_THRESHOLD, GLIBC_MMAP_MAX = 32 * 2**20, 65536


def glibc() -> ctypes.CDLL | None:
    """glibc, or None where the C library is another (its mallopt, malloc_trim are glibc's)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_freed_memory_kept = False


def keep_freed_memory() -> bool:
    """Serve every allocation from glibc's heap and keep what is freed there for the next step to reuse.

    By default glibc maps each allocation over 32 MB afresh with mmap and returns it to the system when it
    is freed, so the next training step's tensor of the same size pays a page fault for every 4 KB page of it:
    the embedding gradient (47 MB for BERT's vocabulary) every step, and from 224 tokens on every attention
    score matrix. PyTorch's CPU tuning guide swaps in jemalloc or tcmalloc for this; two mallopt calls do it
    without a dependency. Memory a run has used stays reserved to it until it exits, or until
    `return_freed_memory`: batches of changing widths fragment the heap, which then only grows
    (`training.callbacks.FreedMemoryLimit` bounds it). Returns False (and changes nothing) where the C library
    is not glibc.
    """
    global _freed_memory_kept
    libc = glibc()
    if libc is None:
        return False
    _freed_memory_kept = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _freed_memory_kept


def freed_memory_kept() -> bool:
    """Whether `keep_freed_memory` is in force in this process."""
    return _freed_memory_kept


def return_freed_memory() -> bool:
    """Undo `keep_freed_memory`: glibc's settings back, and the free pages its heap holds handed back to the
    system now (malloc_trim). Returns False (and changes nothing) where the freed memory was not being kept."""
    global _freed_memory_kept
    libc = glibc()
    if libc is None or not _freed_memory_kept:
        return False
    libc.mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, 2 * GLIBC_MMAP_THRESHOLD)
    libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
    libc.malloc_trim(0)
    _freed_memory_kept = False
    return True


MEMINFO, CGROUP = Path("/proc/meminfo"), Path("/sys/fs/cgroup")


def memory_limit_bytes(meminfo: Path = MEMINFO, cgroup: Path = CGROUP) -> int | None:
    """The memory this process may use: the machine's, or its container's limit where that is lower (cgroup v2
    `memory.max`, v1 `memory/memory.limit_in_bytes`). None where neither can be read (not Linux)."""
    limits = []
    try:
        kib = next(line.split()[1] for line in meminfo.read_text().splitlines() if line.startswith("MemTotal:"))
        limits.append(int(kib) * 1024)
    except (OSError, StopIteration, IndexError, ValueError):
        pass
    for path in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        try:
            limits.append(int(path.read_text().strip()))  # "max" (no limit) is not a number
        except (OSError, ValueError):
            pass
    return min(limits) if limits else None


def resident_bytes() -> int:
    """This process's resident set now (Linux; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


CPUINFO = Path("/proc/cpuinfo")


def first_cpu(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (Linux), or none where it cannot be read."""
    try:
        lines = cpuinfo.read_text().split("\n\n")[0].splitlines()
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines) if value}


def cpu_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name with its family and model numbers, for reports: "x86_64" alone says little a week
    later, and a virtual machine may say only "AMD EPYC", which is a Zen 3 (family 25, AVX2) on one machine of
    this kind, a Zen 4 (family 25, model 17, AVX-512 BF16 at half width) on another and a Zen 5 (family 26,
    AVX-512 BF16) on a third."""
    fields = first_cpu(cpuinfo)
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    numbers = [f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model")) if key in fields]
    return f"{fields['model name']} ({', '.join(numbers)})" if numbers else fields["model name"]


# The vector and matrix extensions that decide which kernels (and which precision) run fast.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The CPU's feature flags, or None where they cannot be read."""
    flags = first_cpu(cpuinfo).get("flags")
    return set(flags.split()) if flags else None


# Environment variables that keep torch's kernels below what the CPU has: ATen's vector kernels, oneDNN's (the
# bf16 matmuls), MKL's (the fp32 ones) and the compiler target of Inductor's kernels (torch.compile). Set all four
# (avx2, AVX2, AVX2, x86-64-v3) to run an AVX-512 machine as an AVX2 one. Inductor builds with -march=native
# otherwise: AVX-512 code around ATen's AVX2 vector types, which computed NaN or out-of-range indices (docs/performance.md).
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "TORCHINDUCTOR_CPP_MARCH")


def isa_caps() -> dict[str, str]:
    """The instruction-set ceilings this process runs under (ISA_CAPS that are set)."""
    return {name: os.environ[name] for name in ISA_CAPS if os.environ.get(name)}


def under_onednn_cap(names: set[str]) -> set[str]:
    """`names` without the flags oneDNN may not use under ONEDNN_MAX_CPU_ISA: a bf16 matmul is only fast where
    oneDNN is allowed AVX-512 BF16 or AMX."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if cap == "ALL" or "AMX" in cap:
        return names
    no_amx = {n for n in names if not n.startswith("amx")}
    if "BF16" in cap or "FP16" in cap or cap.startswith("AVX10"):
        return no_amx
    if cap.startswith("AVX512"):
        return no_amx - {"avx512_bf16"}
    return {n for n in no_amx if not n.startswith("avx512")}


def cpu_kind() -> str:
    """What decides speed on a CPU of this project's machines: AMX and AVX-512 BF16 run bf16 fast; AVX2 alone runs
    fp32. An AVX-512 CPU whose oneDNN is capped (ONEDNN_MAX_CPU_ISA=AVX2) counts as the kind of its cap."""
    names = cpu_flags()
    if names is None:
        return "unknown"
    names = under_onednn_cap(names)
    for flag, kind in (("amx_bf16", "AVX-512 + AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2")):
        if flag in names:
            return kind
    return "no AVX2"


def torch_kernels() -> str:
    """The vector ISA torch's CPU kernels were dispatched to here (e.g. AVX2, AVX512), and oneDNN's presence."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    return f"{capability}, oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}"


def supports_bf16() -> bool:
    """bf16 autocast pays on GPUs that have it and on CPUs with AVX-512 BF16 / AMX; elsewhere fp32.

    Measured: docs/performance.md, "The defaults on each kind".
    """
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_kind() in ("AVX-512 + AMX", "AVX-512 BF16")


def best_precision() -> str:
    """Lightning's precision for this machine: `${best_precision:}` in conf/trainer."""
    return "bf16-mixed" if supports_bf16() else "32-true"


def machine() -> dict:
    """Where a figure was measured, for reports and benchmarks: without it a number means nothing a week later."""
    import torch
    import transformers

    caps = " ".join(f"{name}={value}" for name, value in isa_caps().items())
    return {
        "cpu": cpu_name(), "cpu_kind": cpu_kind() + (f" under {caps}" if caps else ""),
        "cpu_flags": sorted(set(SPEED_FLAGS) & (cpu_flags() or set())), "torch_kernels": torch_kernels(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "precision": best_precision(),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "host": platform.node(),
    }
