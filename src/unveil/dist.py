"""Thin helpers over torch.distributed (launched by torchrun); single process when not launched.

Fail fast: a rank that stops on an error posts its one-line message to the process group's
key-value store and exits at once; every other rank watches that store from a daemon thread and
exits within about a second with that message, instead of waiting at the next barrier or
collective until the (30-minute) timeout.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import torch
import torch.distributed as dist

_FAILED_KEY = "unveil/failed"
_WATCH_INTERVAL_S = 0.5
_finishing = threading.Event()


def init_from_env(device: torch.device) -> None:
    """Join the process group that torchrun describes in the environment, if any."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend=backend)
        _start_watch()


def _store():
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()  # the store every rank already shares


def _start_watch() -> None:
    _finishing.clear()
    store, me = _store(), rank()

    def watch() -> None:
        while not _finishing.wait(_WATCH_INTERVAL_S):
            try:
                failed = store.check([_FAILED_KEY])
                message = store.get(_FAILED_KEY).decode() if failed else None
            except Exception:  # the store went away: the rank that hosted it has stopped
                if _finishing.wait(3.0):
                    return
                message = "lost contact with the other processes (one of them stopped)"
            if message is not None and not _finishing.is_set():
                _exit_now(f"unveil: error: rank {me} stopping because {message}", 1)

    threading.Thread(target=watch, name="unveil-fail-fast", daemon=True).start()


def _exit_now(line: str, code: int) -> None:
    print(line, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)  # no interpreter shutdown: it would wait on the process group


def fail_fast(message: str, code: int = 1) -> None:
    """Called on a rank that hit an error: tell the other ranks, then exit this process now."""
    if not is_dist():
        return
    try:
        _store().set(_FAILED_KEY, f"rank {rank()} failed: {message}")
    except Exception:
        pass  # the others still notice this process is gone
    time.sleep(2 * _WATCH_INTERVAL_S)  # let a store hosted by this rank serve the message
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter shutdown: it would wait on the process group


def finish() -> None:
    """Normal end: stop watching (the others may now exit and close the store), leave the group."""
    _finishing.set()
    if is_dist():
        dist.destroy_process_group()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (no gradient): for logging and metrics."""
    if not is_dist():
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / world_size()


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from all ranks along dim 0, keeping gradients to the local part.

    Used by contrastive losses so negatives come from the global batch.
    """
    if not is_dist():
        return t
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(t), dim=0)



@torch.no_grad()
def gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from all ranks along dim 0, rank order (keys for a queue, shuffles)."""
    if not is_dist():
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def shuffle_batch(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's shuffle-BN: a random permutation of the *global* batch, so each rank's BatchNorm
    sees keys whose statistics are not those of its own queries.

    Returns this rank's share of the shuffled global batch and the indices that undo it (apply
    ``unshuffle_batch``). One process: a local permutation (useful with split BatchNorm). Rank 0
    draws the permutation and broadcasts it; the other ranks' generators are not advanced.
    """
    total = gather_no_grad(x)
    n = total.shape[0]
    perm = torch.randperm(n, generator=generator, device=generator.device).to(x.device)
    if is_dist():
        dist.broadcast(perm, src=0)
    local = perm.view(world_size(), -1)[rank()]
    return total[local], torch.argsort(perm).view(world_size(), -1)[rank()]


@torch.no_grad()
def unshuffle_batch(y: torch.Tensor, unshuffle_idx: torch.Tensor) -> torch.Tensor:
    """Put the outputs of ``shuffle_batch``'s share back in this rank's original order."""
    return gather_no_grad(y)[unshuffle_idx]
