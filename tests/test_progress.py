"""Progress, plan, ETA and curves: what a person watching a long run reads (issue 16)."""
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_crops
from utils import console
from utils.console import duration_text, rate_text
from utils.evaluation.inference import infer_crops
from utils.models.backbones import create_model, normalisation
from utils.training.curves import plot_curves
from utils.training.data import ClassBalancedSampler
from utils.training.engine import Dist, InputPipe, Trainer, score
from utils.training.plan import Plan


def test_rates_under_ten_per_second_keep_a_decimal():
    assert rate_text(0.4) == "0.4"
    assert rate_text(9.94) == "9.9"
    assert rate_text(1234.7) == "1,235"
    assert duration_text(75) == "1:15" and duration_text(3723) == "1:02:03" and duration_text(None) == "?"


def test_prediction_loop_prints_done_total_rate_and_eta_off_a_terminal(tmp_path, monkeypatch, capsys):
    # Off a terminal (pytest captures stdout) every loop prints plain lines; PLAIN_EVERY = 0 makes
    # one per batch, as a long loop makes one every PLAIN_EVERY seconds.
    monkeypatch.setattr(console, "PLAIN_EVERY", 0.0)
    write_crops(tmp_path / "crops", range(1, 11))
    frames = pd.DataFrame(dict(txtid="v1", frame=np.arange(1, 11), label=0, has_crop=True,
                               crop_path=[str(tmp_path / "crops" / f"{i:05d}.jpg") for i in range(1, 11)]))
    model = create_model("test_efficientnet", 8, img_size=32)
    pipe = InputPipe(*normalisation(model), 32, torch.device("cpu"))
    logits, _ = infer_crops(model, frames, pipe, Dist(), "fp32", crop_size=8, batch_size=3, progress="predict val")
    assert logits.shape == (10, 8)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("predict val:")]
    running = [re.fullmatch(r"predict val: (\d+)/10 crops \(\d+%\), ([\d.,]+) crops/s, \d+:\d\d elapsed, "
                            r"ETA (\d+:\d\d)", line) for line in lines[:-1]]
    assert len(running) == 3 and all(running), lines              # batches of 3, 3, 3 then the last 1
    assert [int(m.group(1)) for m in running] == [3, 6, 9]
    assert re.fullmatch(r"predict val: 10/10 crops done in \d+:\d\d \([\d.,]+ crops/s\)", lines[-1]), lines


def test_trainer_prints_the_plan_first_then_the_run_eta_and_writes_curves(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "ETA_AFTER", 0.0)   # the ETA comes after the first minute; here at once
    torch.manual_seed(0)
    x, y = torch.randn(48, 4), torch.arange(48) % 3

    class Toy(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return x[i], y[i]

        def set_epoch(self, epoch):
            pass

    cfg = SimpleNamespace(epochs=2, lr=1e-2, weight_decay=0.0, warmup_epochs=0.0, accum_steps=1, ema=False,
                          ema_decay=0.9, patience=0, label_smoothing=0.0, grad_checkpointing=False)
    sampler = ClassBalancedSampler(y.numpy(), 16, 0, num_classes=3)
    loader = torch.utils.data.DataLoader(Toy(), batch_size=8, sampler=sampler)
    plan = Plan("rows", len(sampler), 8, cfg.epochs, len(y), dict(train=48, val=48))

    def evaluate(model):
        with torch.no_grad():
            return score(y.numpy(), model(x).numpy())

    Trainer(torch.nn.Linear(4, 3), cfg, tmp_path, Dist(), "fp32", lambda net, b: (net(b[0]), b[1], len(b[1]), 0),
            evaluate, plan=plan).fit(loader, sampler)
    out = capsys.readouterr().out.splitlines()
    first_step = next(i for i, line in enumerate(out) if line.startswith("epoch 0"))
    assert out[0].startswith("plan: 2 epochs x 48 rows (6 steps of 8); validation 48 rows") and first_step > 0
    eta = [line for line in out if line.startswith("ETA of the whole run: ")]
    assert len(eta) == 1 and "training" in eta[0] and "prediction" in eta[0]
    assert sum(bool(re.search(r"run ETA \d+:\d\d$", line)) for line in out) == 2
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 150_000


@pytest.mark.parametrize("every, drawn", [(0.0, [0, 1, 2, 3]), (1e9, [0, 3])])
def test_curves_are_redrawn_at_most_every_so_often_and_after_the_last_epoch(tmp_path, monkeypatch, every, drawn):
    import utils.training.engine as engine
    calls = []
    monkeypatch.setattr(engine, "plot_curves", lambda run: calls.append(len((run / "log.jsonl").read_text().splitlines())))
    monkeypatch.setattr(Trainer, "CURVES_EVERY", every)
    x, y = torch.randn(12, 4), torch.arange(12) % 3
    cfg = SimpleNamespace(epochs=4, lr=1e-2, weight_decay=0.0, warmup_epochs=0.0, accum_steps=1, ema=False,
                          ema_decay=0.9, patience=0, label_smoothing=0.0, grad_checkpointing=False)
    sampler = ClassBalancedSampler(y.numpy(), 4, 0, num_classes=3)
    class Toy(torch.utils.data.TensorDataset):
        def set_epoch(self, epoch):
            pass
    loader = torch.utils.data.DataLoader(Toy(x, y), batch_size=6, sampler=sampler)
    Trainer(torch.nn.Linear(4, 3), cfg, tmp_path, Dist(), "fp32", lambda net, b: (net(b[0]), b[1], len(b[1]), 0),
            lambda model: score(y.numpy(), model(x).detach().numpy())).fit(loader, sampler)
    assert [n - 1 for n in calls] == drawn   # the epochs whose line was the last when it was drawn


def test_curves_skip_a_line_cut_short_by_a_crash(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"epoch": 0, "train_loss": 2.0, "val_macro_f1": 0.1, "lr": 0.001}\n'
                                        '{"epoch": 1, "train_lo')
    assert plot_curves(tmp_path) == tmp_path / "curves.png"
    assert plot_curves(tmp_path / "empty") is None
