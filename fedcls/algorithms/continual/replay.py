"""Experience replay at a site: Avalanche's ExperienceBalancedBuffer picks the memory.

When a site finishes an experience, the buffer takes a reservoir sample of it (Avalanche's
``post_adapt``; the memory is split equally over the experiences seen, ``memory_size`` in
all). While training, the site's batches are drawn from the current experience and the memory
together (joint rehearsal). Avalanche's ReplayPlugin instead pairs each current batch with a
memory batch of the same size through its ReplayDataLoader; the loop here keeps one batch
stream so every strategy hook sees the same steps.

The memory (images, labels and reservoir weights per experience) lives in the client state,
so it survives across rounds and experiences.
"""

from __future__ import annotations

import torch
from avalanche.training.storage_policy import ExperienceBalancedBuffer, ReservoirSamplingBuffer

from fedcls.algorithms.continual.streams import tensor_dataset
from fedcls.algorithms.training import Hook, TrainContext
from fedcls.data.federated import SiteTensors

KEY = "replay"


def _tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])


def save_buffer(policy: ExperienceBalancedBuffer) -> dict[str, torch.Tensor]:
    out = {"num_exps": torch.tensor(policy._num_exps), "max_size": torch.tensor(policy.max_size)}
    for g, buf in policy.buffer_groups.items():
        if len(buf.buffer):
            out[f"{g}.x"], out[f"{g}.y"] = _tensors(buf.buffer)
        out[f"{g}.w"], out[f"{g}.size"] = buf._buffer_weights, torch.tensor(buf.max_size)
    return out


def load_buffer(entry: dict[str, torch.Tensor] | None, memory_size: int) -> ExperienceBalancedBuffer:
    policy = ExperienceBalancedBuffer(max_size=memory_size, adaptive_size=True)
    if entry is None:
        return policy
    policy._num_exps = int(entry["num_exps"])
    for g in range(policy._num_exps):
        if f"{g}.w" not in entry:
            continue
        buf = ReservoirSamplingBuffer(int(entry[f"{g}.size"]))
        if f"{g}.x" in entry:
            buf.buffer = tensor_dataset(entry[f"{g}.x"], entry[f"{g}.y"], task_labels=0)
        buf._buffer_weights = entry[f"{g}.w"]
        policy.buffer_groups[g] = buf
    return policy


def memory(policy: ExperienceBalancedBuffer) -> tuple[torch.Tensor, torch.Tensor] | None:
    parts = [_tensors(b.buffer) for b in policy.buffer_groups.values() if len(b.buffer)]
    if not parts:
        return None
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class ReplayHook(Hook):
    """Adds the site's replay memory to its training data; updates it between experiences."""

    def __init__(self, memory_size: int, stream, previous: int, current: int):
        self.memory_size, self.stream = memory_size, stream
        self.previous, self.current = previous, current
        self.replayed = 0  # memory samples added to this round's data

    def before_training(self, ctx: TrainContext) -> None:
        policy = load_buffer(ctx.state.get(KEY), self.memory_size)
        if 0 <= self.previous < self.current:  # the site has finished `previous`
            experience = self.stream.train_experience(self.previous)
            if len(experience.dataset):
                policy.post_adapt(None, experience)
        ctx.state[KEY] = save_buffer(policy)
        mem = memory(policy)
        if mem is not None:
            self.replayed = len(mem[1])
            d, device = ctx.data, ctx.data.train_x.device
            ctx.data = SiteTensors(torch.cat([d.train_x, mem[0].to(device)]),
                                   torch.cat([d.train_y, mem[1].to(device)]),
                                   d.test_x, d.test_y, d.noise_scale)

    def after_training(self, ctx: TrainContext) -> dict[str, float]:
        return {"replay_memory": float(self.replayed)}
