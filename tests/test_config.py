import json
from dataclasses import dataclass, field

import pytest

from utils.config import parse_config


@dataclass
class Cfg:
    lr: float = 1e-3
    epochs: int = 10
    model: str = field(default="swin", metadata={"help": "timm model name"})
    ema: bool = False
    windows: list[int] = field(default_factory=lambda: [32, 48, 64])
    out: str | None = None


PRESETS = {"demo": {"epochs": 2, "model": "tiny"}}


def test_defaults():
    assert parse_config(Cfg, []) == Cfg()


def test_precedence_defaults_preset_file_cli(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 5, "lr": 0.1}))
    cfg = parse_config(Cfg, ["--preset", "demo", "--config", str(path), "--lr", "0.5"], presets=PRESETS)
    assert cfg.model == "tiny"      # preset over default
    assert cfg.epochs == 5          # file over preset
    assert cfg.lr == 0.5            # command line over file
    cfg = parse_config(Cfg, ["--epochs", "7", "--preset", "demo"], presets=PRESETS)
    assert cfg.epochs == 7          # the command line wins whatever the flag order


def test_yaml_file_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ema: true\nwindows: [16, 32]\nlr: 1\nout: somewhere\n")
    cfg = parse_config(Cfg, ["--config", str(path)])
    assert cfg.ema is True and cfg.windows == [16, 32] and cfg.out == "somewhere"
    assert isinstance(cfg.lr, float)
    assert parse_config(Cfg, ["--config", str(path), "--no-ema"]).ema is False


@pytest.mark.parametrize("text", ['{"epoch": 3}', '{"epochs": "three"}', '{"ema": "yes"}'])
def test_bad_config_file_is_rejected(tmp_path, text, capsys):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(SystemExit) as err:
        parse_config(Cfg, ["--config", str(path)])
    assert err.value.code == 2
    assert "c.json" in capsys.readouterr().err


def test_unknown_flag_and_help(capsys):
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--epoch", "3"])
    with pytest.raises(SystemExit) as err:
        parse_config(Cfg, ["-h"])
    assert err.value.code == 0
    assert "timm model name" in capsys.readouterr().out
