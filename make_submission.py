"""Apply an ensemble to the test predictions and write the ABAW Expression submission zip.

Usage: python make_submission.py --ensemble ensembles/<name> [--format per-video|template|both]
                                 [--split test|val] [--out submissions/<name>.zip] [--data DIR]

Applies exactly ensembles/<name>/ensemble.json (weights, smoothing, class biases) to the
members' preds/<split>.npz and writes the files of DESIGN.md section 5 into the folder
beside the zip (submissions/<name>/): per_video/<txtid>.txt and, when the dataset has an
organisers' template, the single file in template order under the template's own name.
The files are validated (every test video present, frame counts, exact header, labels 0..7)
before the zip is written; a failed check names the first bad file and line, and no zip.
--split val writes the val files the same way into submissions/<name>_val/, reads them back
and checks their macro-F1 equals the one in ensemble.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from utils.files import DataError
from utils.readers.affwild2 import read_release_list, read_template
from utils.classes import EXPR_CLASSES, NUM_EXPR_CLASSES
from utils.config import parse_config
from utils.console import cli, log, table
from utils.evaluation.ensemble import Member, apply_spec, load_members
from utils.evaluation.preds import check_same_frames, order_by_key
from utils.runs import read_json
from utils.evaluation.submission import (PER_VIDEO_DIR, clear_outputs, location, score_per_video,
                              validate_per_video, validate_template, write_per_video,
                              write_template, write_zip)

FORMATS = ("per-video", "template", "both")
SCORE_TOLERANCE = 1e-9


@dataclass
class SubmissionConfig:
    ensemble: str = field(default="", metadata={"help": "ensemble folder (or its ensemble.json)"})
    format: str = field(default="both", metadata={"choices": list(FORMATS), "help": "which ABAW files to write"})
    split: str = field(default="test", metadata={"choices": ["test", "val"], "help": "val: write and score the val files"})
    out: str | None = field(default=None, metadata={"help": "zip path; empty: submissions/<ensemble name>.zip"})
    data: str | None = field(default=None, metadata={"help": "prepared data dir; empty: the one in ensemble.json"})


def load_frames(data: Path, split: str) -> tuple[pd.DataFrame, dict]:
    """The frames to predict for split, ordered as prediction files are, and meta.json."""
    path = data / "frames.parquet"
    if not path.is_file():
        raise DataError(f"{path}: not found (pass --data, the prepared data folder)")
    frames = pd.read_parquet(path, columns=["split", "txtid", "frame", "label", "template_row"])
    frames = frames[frames.split == split].drop(columns="split")
    if frames.empty:
        raise DataError(f"{path}: no {split} frame")
    frames["txtid"] = frames.txtid.astype(str)
    frames = frames.iloc[order_by_key(frames.txtid.to_numpy(), frames.frame.to_numpy())]
    meta = read_json(data / "meta.json") if (data / "meta.json").is_file() else {}
    return frames.reset_index(drop=True), meta


def template_locations(frames: pd.DataFrame, meta: dict) -> list[str]:
    """Locations in template order, from the organisers' file itself when it is at hand."""
    if meta.get("template") and Path(meta["template"]).is_file():
        rows = read_template(Path(meta["template"]))
    else:
        rows = frames.sort_values("template_row")
    return [location(t, f) for t, f in zip(rows.txtid.tolist(), rows.frame.tolist())]


def class_mix(ens: dict, split: str, labels: np.ndarray) -> None:
    """The predicted class mix beside the val label mix: a drift here is worth a look."""
    def share(counts):
        counts = np.asarray(counts, dtype=float)
        return 100 * counts / max(counts.sum(), 1)
    columns = {"val labels": share(ens["val"]["label_counts"]),
               "val predicted": share(ens["val"]["pred_counts"])}
    if split != "val":
        columns[f"{split} predicted"] = share(np.bincount(labels, minlength=NUM_EXPR_CLASSES))
    rows = [[c, *(f"{v[i]:.1f}" for v in columns.values())] for i, c in enumerate(EXPR_CLASSES)]
    table("class mix (% of frames)", ["class", *columns], rows)


def run(cfg: SubmissionConfig) -> Path:
    if not cfg.ensemble:
        raise DataError("no ensemble given: pass --ensemble ensembles/<name>")
    spec_path = Path(cfg.ensemble)
    spec_path = spec_path if spec_path.suffix == ".json" else spec_path / "ensemble.json"
    if not spec_path.is_file():
        raise DataError(f"{spec_path}: ensemble.json not found (run ensemble.py first)")
    ens = read_json(spec_path)
    if not (cfg.data or ens.get("data")):
        raise DataError(f"{spec_path}: records no data folder; pass --data")
    frames, meta = load_frames(Path(cfg.data or ens["data"]), cfg.split)

    members = [Member(m["name"], m["runs"], m["head"]) for m in ens["members"]]
    probs, ref = load_members(members, cfg.split)
    check_same_frames({"txtid": frames.txtid.to_numpy(), "frame": frames.frame.to_numpy()}, ref,
                      "frames.parquet", f"{members[0].runs[0]}/preds/{cfg.split}.npz")
    labels = apply_spec(probs, ref["txtid"], ens)
    txtid, frame = ref["txtid"], ref["frame"]

    has_template = cfg.split == "test" and bool((frames.template_row >= 0).any())
    if has_template and not (frames.template_row >= 0).all():
        raise DataError("frames.parquet: only some test frames come from the template; re-run prepare_data.py")
    formats = {"per-video"} if cfg.format in ("per-video", "both") or cfg.split == "val" else set()
    if cfg.format in ("template", "both"):
        if has_template:
            formats.add("template")
        elif cfg.format == "template":
            raise DataError(f"{cfg.split} has no template to fill (template files exist for test only, "
                            "when the dataset ships one); use --format per-video")
        else:
            log(f"no template for {cfg.split}: writing per-video files only")

    zip_path = Path(cfg.out or Path("submissions") / f"{ens['name']}.zip")
    folder = zip_path.with_suffix("") if cfg.split == "test" else zip_path.with_name(zip_path.stem + "_val")
    template_name = Path(meta.get("template") or "EXPR_test_set_predictions.txt").name
    clear_outputs(folder, template_name)
    required = set(frames.txtid.unique())
    if cfg.split == "test" and meta.get("release_list") and Path(meta["release_list"]).is_file():
        required |= set(read_release_list(Path(meta["release_list"])))
    files = []
    if "per-video" in formats:
        files += write_per_video(folder, txtid, frame, labels)
        validate_per_video(folder, frames, required)
    if "template" in formats:
        template_row = frames.template_row.to_numpy()
        files.append(write_template(folder / template_name, txtid, frame, labels, template_row))
        validate_template(folder / template_name, template_locations(frames, meta), required)
    log(f"wrote and validated {len(files)} file(s) in {folder} ({len(labels):,} frames, "
        f"{len(required)} videos): " + " and ".join(sorted(formats)))
    class_mix(ens, cfg.split, labels)

    if cfg.split == "val":
        score = score_per_video(folder, frames)
        expected = ens["val"]["macro_f1"]
        if abs(score - expected) > SCORE_TOLERANCE:
            raise DataError(f"{folder / PER_VIDEO_DIR}: val macro-F1 read from disk is {score:.6f}, "
                            f"ensemble.json says {expected:.6f}")
        log(f"val macro-F1 of the files on disk: {100 * score:.2f}, equal to ensemble.json")
        return folder
    write_zip(folder, files, zip_path)
    log(f"submission: {zip_path}")
    return zip_path


def main(argv=None) -> Path:
    cfg = parse_config(SubmissionConfig, argv, description=__doc__.split("\n")[0])
    try:
        return run(cfg)
    except DataError as err:
        raise SystemExit(f"error: {err}")


if __name__ == "__main__":
    cli(main)
