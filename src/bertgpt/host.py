"""Process-wide settings for the host a run is on."""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

from bertgpt.errors import UserError

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


class DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p), ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def malloc_library() -> str | None:
    """The file name of the library whose `malloc` this process calls: glibc's libc.so.6, or an allocator put in
    front of it with LD_PRELOAD (libmimalloc.so.3, libtcmalloc_minimal.so.4, ...). None where it cannot be told."""
    libc = glibc()
    if libc is None or not hasattr(libc, "dladdr"):
        return None
    info = DlInfo()
    if not libc.dladdr(ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p), ctypes.byref(info)) or not info.dli_fname:
        return None
    return Path(os.fsdecode(info.dli_fname)).name


def allocator() -> str:
    """glibc, mimalloc, or the file name of another preloaded allocator ("unknown" where it cannot be told)."""
    library = malloc_library() or "unknown"
    return "glibc" if library.startswith("libc.") else "mimalloc" if library.startswith("libmimalloc") else library


def mimalloc_library() -> Path | None:
    """mimalloc's shared library as the cmeel-mimalloc wheel installs it (a dependency on Linux), or None."""
    from importlib import metadata

    try:
        files = metadata.files("cmeel-mimalloc") or []
    except metadata.PackageNotFoundError:
        return None
    found = sorted((f for f in files if f.name.startswith("libmimalloc.so")), key=lambda f: len(f.name))
    return Path(found[0].locate()) if found else None


def preloadable_mimalloc() -> Path | None:
    """`mimalloc_library()` where LD_PRELOAD can name it: not where its path holds a space or a colon (its separators)."""
    library = mimalloc_library()
    return library if library is not None and not any(c in str(library) for c in " :") else None


ALLOCATOR_CHOICE = "BERTGPT_ALLOCATOR"  # mimalloc (the default, where installed) or glibc


def chosen_allocator() -> str:
    """BERTGPT_ALLOCATOR: mimalloc (the default) or glibc; anything else is a user error."""
    choice = os.environ.get(ALLOCATOR_CHOICE, "mimalloc")
    if choice not in ("mimalloc", "glibc"):
        raise UserError(f"{ALLOCATOR_CHOICE}={choice}: choose mimalloc (the default) or glibc (the C library's own malloc).")
    return choice


def commands_allocator() -> str:
    """The allocator a command started from this process's environment runs under (`rerun_under_mimalloc`)."""
    return "mimalloc" if chosen_allocator() == "mimalloc" and preloadable_mimalloc() else "glibc"


def rerun_under_mimalloc() -> None:
    """Runs this process's command again in its place (exec: the same process id) with mimalloc preloaded, so that
    every allocation, torch's tensors included, comes from mimalloc instead of glibc's malloc.

    Why: kept for the next step (`keep_freed_memory`), glibc's heap fragments under batches of changing widths and
    only grows; mimalloc's stops growing, at the same speed (docs/performance.md, "The allocator": half the peak over
    `experiment=best`'s first 240 steps). An allocator can only replace malloc before the process starts,
    hence the exec. Nothing happens where mimalloc is not installed (not Linux), where it already serves this
    process, where its path holds a space or a colon (LD_PRELOAD's separators), or with BERTGPT_ALLOCATOR=glibc."""
    if chosen_allocator() == "glibc" or allocator() != "glibc":
        return
    library = preloadable_mimalloc()
    if library is None:
        if ALLOCATOR_CHOICE in os.environ:
            raise UserError(f"{ALLOCATOR_CHOICE}=mimalloc, but mimalloc cannot be preloaded here ({mimalloc_library() or 'not installed'}): "
                            f"pip install cmeel-mimalloc (Linux) in a folder without spaces, or {ALLOCATOR_CHOICE}=glibc.")
        return
    preload = " ".join(filter(None, [str(library), os.environ.get("LD_PRELOAD")]))
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "LD_PRELOAD": preload})


_freed_memory_kept = False
MI_OPTION_PURGE_DELAY = 15  # mimalloc.h's mi_option_purge_delay: ms from a free to handing the pages back, -1 never
_mimalloc_purge_delay = None  # mimalloc's own, while keep_freed_memory has turned it off


def mimalloc() -> ctypes.CDLL:
    """The preloaded mimalloc's functions (they come first in the process's global symbols)."""
    library = ctypes.CDLL(None)
    library.mi_option_get.restype = ctypes.c_long
    return library


def keep_freed_memory() -> bool:
    """Keep what is freed in the process for the next step to reuse, instead of handing it back to the system.

    By default glibc maps each allocation over 32 MB afresh with mmap and returns it to the system when it
    is freed, so the next training step's tensor of the same size pays a page fault for every 4 KB page of it:
    the embedding gradient (47 MB for BERT's vocabulary) every step, and from 224 tokens on every attention
    score matrix. Two mallopt calls serve every allocation from glibc's heap and never trim it; under mimalloc
    (`rerun_under_mimalloc`) its purge delay, after which it hands freed pages back (1 s in mimalloc 3), is turned off.
    Memory a run has used stays reserved to it until it exits, or until `return_freed_memory`
    (`training.callbacks.FreedMemoryLimit`): batches of changing widths fragment glibc's heap, which then only grows.
    Returns False (and changes nothing) under any other allocator.
    """
    global _freed_memory_kept, _mimalloc_purge_delay
    libc, kind = glibc(), allocator()
    if kind == "glibc" and libc is not None:
        _freed_memory_kept = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    elif kind == "mimalloc" and not _freed_memory_kept:
        functions = mimalloc()
        _mimalloc_purge_delay = functions.mi_option_get(MI_OPTION_PURGE_DELAY)
        functions.mi_option_set(MI_OPTION_PURGE_DELAY, ctypes.c_long(-1))
        _freed_memory_kept = True
    return _freed_memory_kept


def freed_memory_kept() -> bool:
    """Whether `keep_freed_memory` is in force in this process."""
    return _freed_memory_kept


def return_freed_memory() -> bool:
    """Undo `keep_freed_memory`: the allocator's own settings back, and the free pages it holds handed back to the
    system: glibc's now (malloc_trim); mimalloc's once they are next freed, after its purge delay (pages freed while
    it was off were never scheduled for return, and a forced collect does not return them: they go back as the next
    steps reuse and free them). Returns False (and changes nothing) where the freed memory was not being kept."""
    global _freed_memory_kept
    if not _freed_memory_kept:
        return False
    if allocator() == "mimalloc":
        mimalloc().mi_option_set(MI_OPTION_PURGE_DELAY, ctypes.c_long(_mimalloc_purge_delay))
    else:
        libc = glibc()
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
        "allocator": allocator(), "commands_allocator": commands_allocator(),  # this process's; src/*.py's (rerun_under_mimalloc)
        "cpu_flags": sorted(set(SPEED_FLAGS) & (cpu_flags() or set())), "torch_kernels": torch_kernels(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "precision": best_precision(),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "host": platform.node(),
    }
