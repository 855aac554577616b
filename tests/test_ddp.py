"""DistributedDataParallel on the CPU: two processes (gloo), each training a tiny
bidirectional birnn_ext.LSTM model on half the batch for 3 steps, end with the parameters of
one process training on the full batch (mean loss: DDP's averaged gradient is the full-batch
gradient)."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import birnn_ext

STEPS, BATCH, T, I, H = 3, 4, 5, 3, 4


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = birnn_ext.LSTM(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
        self.head = nn.Linear(2 * H, 1, dtype=torch.float64)

    def forward(self, x):
        return self.head(self.rnn(x)[0]).squeeze(-1)


def _data():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(T, BATCH, I, generator=gen, dtype=torch.float64)
    y = torch.randn(T, BATCH, generator=gen, dtype=torch.float64)
    return x, y


def _initial_model():
    torch.manual_seed(11)
    return _Model()


def _train(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    return model


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = nn.parallel.DistributedDataParallel(_initial_model())
        x, y = _data()
        half = BATCH // world
        rows = slice(rank * half, (rank + 1) * half)
        _train(model, x[:, rows], y[:, rows])
        torch.save(model.module.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    start = _initial_model().state_dict()
    single = _train(_initial_model(), *_data()).state_dict()
    for rank in range(2):
        trained = torch.load(tmp_path / f"rank{rank}.pt")
        assert trained.keys() == single.keys()
        for name, value in trained.items():
            assert not torch.equal(value, start[name]), f"rank {rank}: {name} did not train"
            torch.testing.assert_close(value, single[name], atol=1e-10, rtol=1e-9,
                                       msg=lambda m: f"rank {rank}, {name}: {m}")
