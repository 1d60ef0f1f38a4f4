"""Reused shared-memory slots for the loader workers' pixel batches (``crop_on_device``).

A batch of decoded pixels is tens of MB (50 MB for 256 images of 256 px). Sent the usual way, as a new shared-memory
tensor per batch, it costs the DataLoader's single pin thread three things per batch: a socket handshake to receive
the memory's file descriptor, a copy of the whole batch into pinned memory, and unmapping the memory when the batch is
dropped. From a packed store on a 16-core H100 host, that thread was busy all the time and set the pace of training.

Instead, each worker writes its batches into a few shared-memory slots that it keeps (:class:`WorkerSlots`). A slot's
memory travels once, with its first batch; the training process keeps it mapped and registers it with CUDA as pinned
memory (:func:`pin`), so a later batch only names its slot: no handshake, no copy into pinned memory, no unmapping.
The training process hands a slot back through a flag in shared memory once the batch's copy to the device has been
made, or when the batch is dropped unread; a worker whose next slot is still in use waits for it.
"""
from __future__ import annotations

import math
import os
import threading
import time
import uuid
from dataclasses import dataclass

import torch

# A worker's slots. The loader asks a worker for at most prefetch_factor (2) batches ahead of the one the training
# process takes; that one is copied and handed back before the next is taken, and accelerate's loader holds one
# more, so the fourth slot is free by the time the worker needs it.
SLOTS_PER_WORKER = 4
# how long a worker waits for a slot before it gives up (the training process stopped handing batches back)
WAIT_SECONDS = 600.0
# a slot that a larger batch outgrows is replaced by one this much larger, so varying image sizes settle quickly
_GROWTH = 1.25


@dataclass
class SlotRef:
    """Where a batch's bytes lie: slot ``index`` of the worker whose slots are ``owner`` (a token unique to the worker
    process), its first ``nbytes``. ``memory`` (the slot's memory) and ``flags`` (the worker's in-use flags) travel
    with the first batch of each slot (and of each larger replacement, ``generation``), else they are None."""

    owner: str
    worker: int
    index: int
    generation: int
    nbytes: int
    memory: torch.Tensor | None = None
    flags: torch.Tensor | None = None


def shared_bytes(nbytes: int) -> torch.Tensor:
    """A new 1-D uint8 tensor of ``nbytes`` in shared memory, which a worker's message then names instead of
    carrying (as torch's default_collate places its batches)."""
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))


class WorkerSlots:
    """A loader worker's ``count`` slots, used in turn, and their in-use flags (shared int32, 1 while the training
    process holds the slot's batch)."""

    def __init__(self, worker: int, count: int = SLOTS_PER_WORKER) -> None:
        self.owner, self.worker = uuid.uuid4().hex, worker
        self.flags = torch.zeros(count, dtype=torch.int32).share_memory_()
        self.memory: list[torch.Tensor | None] = [None] * count
        self.generations = [0] * count
        self.next = 0

    def claim(self, nbytes: int, wait_seconds: float | None = None) -> tuple[SlotRef, torch.Tensor]:
        """The next slot, once the training process has handed it back: its reference and ``nbytes`` of its memory
        to write the batch into (the slot is replaced by a larger one when the batch does not fit).

        Raises:
            RuntimeError: the slot stayed in use for ``wait_seconds`` (default :data:`WAIT_SECONDS`).
        """
        index = self.next
        self.next = (index + 1) % len(self.memory)
        wait_seconds = WAIT_SECONDS if wait_seconds is None else wait_seconds
        deadline = time.monotonic() + wait_seconds
        while int(self.flags[index]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"loader worker {self.worker}: its pixel slot {index} stayed in use for "
                                   f"{wait_seconds:g} s; the training process stopped handing batches back")
            time.sleep(0.0005)
        memory = self.memory[index]
        new = memory is None or memory.numel() < nbytes
        if new:
            size = nbytes if memory is None else math.ceil(nbytes * _GROWTH)
            memory = shared_bytes(max(size, 1))
            self.memory[index] = memory
            self.generations[index] += 1
        self.flags[index] = 1
        ref = SlotRef(self.owner, self.worker, index, self.generations[index], nbytes,
                      memory if new else None, self.flags if new else None)
        return ref, memory[:nbytes]


_worker_slots: tuple[int, WorkerSlots] | None = None


def worker_slots(worker: int) -> WorkerSlots:
    """This worker process's slots, made on first use (a forked process makes its own)."""
    global _worker_slots
    if _worker_slots is None or _worker_slots[0] != os.getpid():
        _worker_slots = (os.getpid(), WorkerSlots(worker))
    return _worker_slots[1]


# The training process's side: each slot's memory, mapped once (owner, index) -> (generation, memory); each worker's
# flags; the current owner per worker id; the memories registered with CUDA. Written by the loader's pin thread (or
# the thread that takes batches, without one); the lock keeps two loaders' threads apart.
_lock = threading.Lock()
_memory: dict[tuple[str, int], tuple[int, torch.Tensor]] = {}
_flags: dict[str, torch.Tensor] = {}
_owners: dict[int, str] = {}
_pinned: set[int] = set()


def receive(slot: SlotRef) -> tuple[torch.Tensor, torch.Tensor]:
    """In the training process: the batch's bytes (a view of the slot's memory, mapped with the slot's first batch)
    and its worker's flags (for :func:`hand_back`).

    Raises:
        RuntimeError: a batch of a slot generation that is not the mapped one (the protocol was broken).
    """
    key = (slot.owner, slot.index)
    with _lock:
        if slot.memory is not None:
            previous = _owners.get(slot.worker)
            if previous is not None and previous != slot.owner:  # a new loader's worker: the old one's batches are done
                for old in [k for k in _memory if k[0] == previous]:
                    _unpin(_memory.pop(old)[1])
                _flags.pop(previous, None)
            _owners[slot.worker] = slot.owner
            if key in _memory:
                _unpin(_memory[key][1])
            _memory[key] = (slot.generation, slot.memory)
            _flags[slot.owner] = slot.flags
        generation, memory = _memory[key]
        flags = _flags[slot.owner]
    if generation != slot.generation:
        raise RuntimeError(f"pixel slot {slot.index} of loader worker {slot.worker} arrived as generation "
                           f"{slot.generation}, but generation {generation} is mapped")
    return memory[:slot.nbytes], flags


def pin(slot: SlotRef) -> bool:
    """Register the slot's memory with CUDA as pinned memory (once); False where CUDA refuses."""
    with _lock:
        memory = _memory[(slot.owner, slot.index)][1]
        pointer = memory.data_ptr()
        if pointer not in _pinned:
            if int(torch.cuda.cudart().cudaHostRegister(pointer, memory.numel(), 0)):
                return False
            _pinned.add(pointer)
    return True


def _unpin(memory: torch.Tensor) -> None:
    pointer = memory.data_ptr()
    if pointer in _pinned:
        _pinned.discard(pointer)
        torch.cuda.cudart().cudaHostUnregister(pointer)


def hand_back(flags: torch.Tensor, index: int) -> None:
    """Mark slot ``index`` free for its worker."""
    flags[index] = 0
