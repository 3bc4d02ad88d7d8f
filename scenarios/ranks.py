"""Where a generate run executes: one process on a chosen device, or DDP ranks launched by Lightning
Fabric (on one machine or across SLURM nodes), each imagining its share of the scenario blocks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from data_pipeline.errors import InputError


@dataclass
class Ranks:
    """This process's place in the run."""

    rank: int
    world_size: int
    barrier: Callable[[], None]
    device: torch.device


def _one_process() -> None:
    """The barrier of a 1-process run: nothing to wait for."""


def single_device(accelerator: str) -> torch.device:
    """The device of a 1-process run, from a Lightning accelerator name."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    if accelerator in ("cpu", "auto"):
        return torch.device("cpu")
    raise InputError(f"--accelerator {accelerator!r}; expected cpu, gpu, cuda, mps or auto")


def launch(accelerator: str, devices: int, num_nodes: int) -> Ranks:
    """One process (no Lightning import), or Fabric's DDP launch: it starts the other ranks (this script
    again) and finds them on a cluster."""
    if devices <= 1 and num_nodes <= 1:
        return Ranks(0, 1, _one_process, single_device(accelerator))
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp")
    fabric.launch()
    return Ranks(fabric.global_rank, fabric.world_size, fabric.barrier, fabric.device)
