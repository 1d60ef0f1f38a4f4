"""The loader workers' reused pixel slots (vitzoo.train.staging): batches arrive intact however often a slot is
reused, a slot's memory travels once, a batch hands its slot back when copied or dropped, and a worker that waits
too long says why."""
from __future__ import annotations

import gc
import pickle
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vitzoo.train import staging
from vitzoo.train.device_decode import EncodedCrop, _pixels, collate_encoded

CPU = torch.device("cpu")
SHAPE = (3, 5, 7)


def image(index: int) -> torch.Tensor:
    """Image ``index``'s pixels: distinct per image, random-looking, never all zero."""
    return torch.randint(1, 256, SHAPE, generator=torch.Generator().manual_seed(1000 + index), dtype=torch.uint8)


class Pixels(Dataset):
    def __len__(self) -> int:
        return 48

    def __getitem__(self, index: int) -> tuple[EncodedCrop, int]:
        return EncodedCrop(image(index).flatten(), (0.0, 0.0, 7.0, 5.0), False, SHAPE), index


def loader(**kwargs) -> DataLoader:
    return DataLoader(Pixels(), batch_size=2, num_workers=2, collate_fn=collate_encoded,
                      multiprocessing_context="fork", **kwargs)


def test_workers_reuse_their_slots_and_every_batch_arrives_intact(monkeypatch) -> None:
    monkeypatch.setattr(staging, "WAIT_SECONDS", 20.0)  # a slot never handed back fails the test, not hangs it
    sent_memory = 0
    for batch, targets in loader():  # 24 batches through 2 workers x 4 slots: each slot used three times
        assert batch.slot is not None
        sent_memory += batch.slot.memory is not None
        pixels = _pixels(batch, CPU)
        assert torch.equal(pixels, torch.stack([image(i) for i in targets.tolist()]))
        assert int(staging._flags[batch.slot.owner][batch.slot.index]) == 0  # handed back once copied
    assert sent_memory == 2 * staging.SLOTS_PER_WORKER  # each slot's memory travelled once


def test_a_dropped_batch_hands_its_slot_back(monkeypatch) -> None:
    monkeypatch.setattr(staging, "WAIT_SECONDS", 20.0)
    targets_seen = []
    for batch, targets in loader():  # never copied: only dropping the batch frees its slot
        targets_seen += targets.tolist()
        flags, index = staging._flags[batch.slot.owner], batch.slot.index
        assert int(flags[index]) == 1
        del batch
        gc.collect()
        assert int(flags[index]) == 0
    assert targets_seen == list(range(48))


def test_a_worker_waits_for_a_slot_whose_batch_is_still_held(monkeypatch) -> None:
    monkeypatch.setattr(staging, "WAIT_SECONDS", 20.0)
    batches = iter(loader())
    held, held_targets = next(batches)  # worker 0's first slot, kept
    for _ in range(5):  # worker 0 fills its other slots and, prefetching, comes back to the held one
        batch, _ = next(batches)
        _pixels(batch, CPU)
    time.sleep(0.5)
    assert torch.equal(_pixels(held, CPU), torch.stack([image(i) for i in held_targets.tolist()]))
    assert sum(1 for _ in batches) == 24 - 6  # once handed back, the worker goes on


def test_a_slot_travels_once_and_a_larger_batch_gets_a_larger_slot() -> None:
    slots = staging.WorkerSlots(worker=0, count=1)
    ref, view = slots.claim(10)
    assert ref.memory is not None and ref.flags is not None and view.numel() == 10
    slots.flags[0] = 0
    ref, _ = slots.claim(8)
    assert ref.memory is None and ref.flags is None and ref.generation == 1  # reused, not sent again
    slots.flags[0] = 0
    ref, view = slots.claim(20)
    assert ref.memory is not None and ref.memory.numel() == 25 and ref.generation == 2 and view.numel() == 20


def test_a_worker_whose_slot_stays_in_use_says_why() -> None:
    slots = staging.WorkerSlots(worker=3, count=1)
    slots.claim(4)
    with pytest.raises(RuntimeError, match="worker 3: its pixel slot 0 stayed in use for 0.05 s"):
        slots.claim(4, wait_seconds=0.05)


def test_a_batch_pickles_its_slot_not_its_bytes() -> None:
    shape = (3, 32, 48)
    pixels = torch.randint(1, 256, shape, dtype=torch.uint8).flatten()
    slots = staging.WorkerSlots(worker=0, count=1)
    batch, _ = collate_encoded([(EncodedCrop(pixels, (0.0, 0.0, 48.0, 32.0), False, shape), 0)])
    ref, batch.data = slots.claim(pixels.numel())
    batch.data.copy_(pixels)
    batch.slot = ref
    first = pickle.dumps(batch)  # the slot's memory goes along (between processes a shared-memory handle)
    assert torch.equal(pickle.loads(first).data, pixels)
    slots.flags[0] = 0
    batch.slot, batch.data = slots.claim(pixels.numel())
    again = pickle.dumps(batch)
    assert len(again) < pixels.numel() // 4 < len(first)  # the reused slot is only named
    assert torch.equal(pickle.loads(again).data, pixels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pinned memory, cudaHostRegister)")
def test_slots_are_pinned_in_place_and_copied_to_the_gpu_intact() -> None:
    device = torch.device("cuda")
    for batch, targets in loader(pin_memory=True):
        assert batch.slot is not None and batch.data.is_pinned()
        pixels = _pixels(batch, device)
        torch.cuda.synchronize()
        assert torch.equal(pixels.cpu(), torch.stack([image(i) for i in targets.tolist()]))
        assert int(staging._flags[batch.slot.owner][batch.slot.index]) == 0
    assert all(int(flags.sum()) == 0 for flags in staging._flags.values())
