"""How many torch threads a command uses: the CPUs this process may use, and what the model is.

torch's default is one thread per core of the machine, which oversubscribes a process that a container,
SLURM or `taskset` gives fewer: the threads spin against each other and against the neighbours (measured
on 2 shared cores: an RSSM fit took 181 s with the default against 33 s with one thread; the ensemble
0.93 against 0.36 s a step). So every command (`train.py fit | validate | test | policy`, `generate.py`,
`python -m twin.live`) takes `--threads N|auto` and calls `apply_threads` once, before the work starts.

`auto` is, in this order: an explicit `OMP_NUM_THREADS` from the user; else the usable CPUs (the fewest of
the affinity mask `os.sched_getaffinity`, the cgroup CPU quota rounded up, and `SLURM_CPUS_PER_TASK`),
shared among the command's processes; and small sequential models get one thread (`SMALL_MODELS`).

The rule for small models, measured on the development machine (2 cores shared with other work, a
10-episode Pendulum store, the `small` preset trained by Lightning for 30 steps after 5 warm-up steps, in
ms a step; two runs each, alternating 1 and 2 threads):

| model (preset small) | 1 thread | 2 threads |
| --- | --- | --- |
| ensemble (batch 32, window 16) | 15.8, 14.4 | 61.5, 23.5 |
| rssm (batch 16, window 50) | 181, 248 | 1360, 8688 |

Their matmuls are too small to split (the RSSM's are also one after another along time), so a second
thread only adds synchronisation; the `tiny` preset is smaller still. Larger presets, the diffusion model
and unknown kinds get every usable CPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from data_pipeline.errors import UserError

__all__ = ["SMALL_MODELS", "CpuBudget", "ThreadChoice", "Threads", "apply_threads", "cgroup_cpu_quota",
           "choose_threads", "cpu_budget", "parse_threads"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
# (kind, preset) pairs that run fastest on one thread: the table above, and the policy loop's agent (small MLPs;
# benchmarks/bench_policy.py runs it on one thread).
SMALL_MODELS = frozenset({("ensemble", "tiny"), ("ensemble", "small"), ("rssm", "tiny"), ("rssm", "small"),
                          ("policy", None)})
Threads = int | Literal["auto"]


def parse_threads(text: str | int) -> Threads:
    """`--threads`: a positive number or `auto`."""
    if isinstance(text, int) or str(text).strip().isdigit():
        number = int(text)
        if number >= 1:
            return number
    elif str(text).strip().lower() == "auto":
        return "auto"
    raise UserError(f"--threads {text!r}; expected a positive number of threads or 'auto'")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this cgroup in CPUs (e.g. 1.5), or None where none is set or none is readable.

    cgroup v2 keeps `max PERIOD` or `QUOTA PERIOD` in `cpu.max`; cgroup v1 keeps `cpu.cfs_quota_us` (-1: none)
    and `cpu.cfs_period_us` under the cpu controller's folder. A container sees its own cgroup at the root.
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may use, by each source (None: that source sets no limit)."""

    affinity: int
    quota: float | None
    slurm: int | None

    @property
    def cpus(self) -> int:
        """The fewest the sources allow, at least 1 (a fractional quota rounds up: 0.5 CPU still runs 1 thread)."""
        limits = [self.affinity, *(math.ceil(x) for x in (self.quota, self.slurm) if x is not None)]
        return max(1, min(limits))


def cpu_budget(environ: Mapping[str, str] | None = None, cgroup_root: Path = CGROUP_ROOT) -> CpuBudget:
    """The affinity mask (where the OS has one), the cgroup quota and `SLURM_CPUS_PER_TASK`."""
    env = os.environ if environ is None else environ
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity mask
        affinity = os.cpu_count() or 1
    slurm_text = env.get("SLURM_CPUS_PER_TASK", "").strip()
    slurm = int(slurm_text) if slurm_text.isdigit() and int(slurm_text) > 0 else None
    return CpuBudget(affinity=affinity, quota=cgroup_cpu_quota(cgroup_root), slurm=slurm)


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count and why; `str()` is the line a command prints."""

    threads: int
    reason: str

    def __str__(self) -> str:
        return f"threads: {self.threads} ({self.reason})"


def choose_threads(requested: Threads = "auto", *, kind: str | None = None, preset: str | None = None,
                   processes: int = 1, environ: Mapping[str, str] | None = None,
                   cgroup_root: Path = CGROUP_ROOT) -> ThreadChoice:
    """The torch thread count for `requested` (a number wins; `auto` follows the module's rule).

    `kind` / `preset` name the model (None: unknown, no small-model rule); `processes` is how many processes
    of this command share the CPUs (DDP ranks on one node)."""
    env = os.environ if environ is None else environ
    budget = cpu_budget(env, cgroup_root)
    quota = "none" if budget.quota is None else f"{budget.quota:g}"
    where = f"affinity {budget.affinity}, cgroup quota {quota}" + (f", SLURM {budget.slurm}" if budget.slurm else "")
    if requested != "auto":
        return ThreadChoice(int(requested), f"--threads; {where}")
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return ThreadChoice(int(omp), f"OMP_NUM_THREADS; {where}")
    share = max(1, budget.cpus // max(1, processes))
    if share > 1 and (kind, preset) in SMALL_MODELS:
        return ThreadChoice(1, f"small {kind} model; {where}")
    return ThreadChoice(share, where + (f", {processes} processes" if processes > 1 else ""))


_applied: list[ThreadChoice] = []


def apply_threads(requested: Threads = "auto", *, kind: str | None = None, preset: str | None = None,
                  processes: int = 1, quiet: bool = False) -> ThreadChoice:
    """Set torch's intra-op and inter-op thread counts from `choose_threads` and print the choice once, on
    stdout beside the command's other `key: value` lines (stderr stays one line for a user error).

    Inter-op threads (torch runs independent ops on them, rarely in eager code) get the same count, so the
    two pools together stay within the budget's order; torch allows setting them once per process, before
    any parallel work, so a later call leaves them as they are."""
    import torch

    choice = choose_threads(requested, kind=kind, preset=preset, processes=processes)
    torch.set_num_threads(choice.threads)
    try:
        torch.set_num_interop_threads(choice.threads)
    except RuntimeError:  # already set, or inter-op work already ran: the first setting stands
        pass
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    if not quiet and rank == "0" and choice not in _applied:
        print(choice, flush=True)
    _applied.append(choice)
    return choice
