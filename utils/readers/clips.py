"""Folders of short labelled videos (one emotion per clip) as a dataset of the Aff-Wild2 system.

Labels come from a CSV (columns file, label and optionally speaker; the label an ABAW class name,
a DFEW class name, a RAVDESS / CREMA-D emotion word or an ABAW id 0..7) or from the file names
under one convention or several (`ravdess,cremad`: the first whose pattern the name matches):
  ravdess  MM-VV-EE-II-SS-RR-AA.mp4 (Livingstone & Russo 2018): modality (01 audio-video,
           02 video-only, 03 audio-only: left out, no picture), vocal channel, EE emotion
           (01 neutral 02 calm 03 happy 04 sad 05 angry 06 fearful 07 disgust 08 surprised),
           intensity, statement, repetition, AA actor = the speaker
  cremad   AAAA_SSS_EMO_LL.flv (Cao et al. 2014): AAAA actor = the speaker, SSS sentence,
           EMO one of ANG DIS FEA HAP NEU SAD, LL intensity
The class map to the 8 ABAW classes (and to DFEW's 7, where one exists: calm has none) is fixed
in CLASS_MAP and printed by prepare_data.py. Folds are speaker-disjoint: speakers are dealt to
the folds largest first, each to the fold with the fewest clips so far.

Written (prepare_clips, beside the Aff-Wild2 tables, DESIGN.md section 4):
  frames.parquet  every frame 1..n of every clip (split train, or val for the clips of
                  --val-fold), label = its clip's label, the crop of crop_faces.py where a face was found
  videos.parquet, audio/, spec/   as for Aff-Wild2 (the clip's sound)
  clips.parquet   videoid, path, speaker, source_label, label (ABAW id), dfew_label (-1: none), fold,
                  dfew_clip (the clip's DFEW number, '' if it has no DFEW class or no crop)
  dfew/           the DFEW system's tables (clips, folds, frames, audio; utils/readers/dfew.py), made by
                  prepare_dfew itself from dfew_tree/: the DFEW layout of symlinks (Clip/clip_224x224/<00001>
                  -> the clip's crop folder, Clip/original/<00001>.<ext> -> the clip, EmoLabel_DataSplit/
                  set_<k>.csv: fold k's clips are its test split, the others its train split)
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from utils.classes import DFEW_CLASSES, EXPR_CLASSES
from utils.console import WarningCounter, log, table, track
from utils.files import DataError, is_video, read_text, walk
from utils.readers import affwild2
from utils.readers.audio import ensure_spectrograms
from utils.readers.dfew import prepare_dfew
from utils.readers.media import prepare_media, report_media
from utils.runs import save_parquet, write_json, write_text

# source emotion word -> ABAW id; the DFEW id follows from the ABAW class (ABAW_TO_DFEW).
CLASS_MAP = {"neutral": 0, "calm": 7, "happy": 4, "sad": 5, "angry": 1, "fearful": 3, "disgust": 2,
             "surprised": 6}
ABAW_TO_DFEW = {0: DFEW_CLASSES.index("Neutral"), 1: DFEW_CLASSES.index("Angry"), 2: DFEW_CLASSES.index("Disgust"),
                3: DFEW_CLASSES.index("Fear"), 4: DFEW_CLASSES.index("Happy"), 5: DFEW_CLASSES.index("Sad"),
                6: DFEW_CLASSES.index("Surprise"), 7: -1}
RAVDESS_EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
CREMAD_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
CREMAD_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
CONVENTIONS = ("ravdess", "cremad")


def abaw_id(text: str) -> int | None:
    """An ABAW id from a label text: an ABAW or DFEW class name, an emotion word, or 0..7."""
    t = text.strip().lower()
    names = {c.lower(): i for i, c in enumerate(EXPR_CLASSES)}
    dfew = {c.lower(): abaw for abaw, d in ABAW_TO_DFEW.items() if d >= 0 for c in [DFEW_CLASSES[d]]}
    words = CLASS_MAP | {k.lower(): CLASS_MAP[v] for k, v in CREMAD_EMOTIONS.items()}
    if t in names or t in dfew or t in words:
        return names.get(t, dfew.get(t, words.get(t)))
    return int(t) if t.isdigit() and int(t) < len(EXPR_CLASSES) else None


def from_name(path: Path, convention: str) -> tuple[str, str] | str:
    """(speaker, emotion word) from a file name under a convention, or the reason it is left out."""
    stem = path.stem
    if convention == "ravdess":
        m = RAVDESS_NAME.match(stem)
        if not m:
            return "not a RAVDESS name (MM-VV-EE-II-SS-RR-AA)"
        if m.group(1) == "03":
            return "audio-only RAVDESS file (modality 03): no picture"
        emotion = int(m.group(3))
        if not 1 <= emotion <= 8:
            return f"RAVDESS emotion {m.group(3)} is not 01..08"
        return f"ravdess-{m.group(7)}", RAVDESS_EMOTIONS[emotion - 1]
    m = CREMAD_NAME.match(stem)
    if not m:
        return "not a CREMA-D name (AAAA_SSS_EMO_LL)"
    if m.group(3) not in CREMAD_EMOTIONS:
        return f"CREMA-D emotion {m.group(3)} is not one of {', '.join(CREMAD_EMOTIONS)}"
    return f"cremad-{m.group(1)}", CREMAD_EMOTIONS[m.group(3)]


def read_label_csv(path: Path) -> dict[str, tuple[str, str]]:
    """file stem -> (speaker or '', label text) from a CSV with a header naming `file` (or
    path/video/name/clip), `label` (or emotion) and optionally `speaker` (or actor/subject)."""
    rows = list(csv.reader(io.StringIO(read_text(path)), skipinitialspace=True))
    if not rows:
        raise DataError(f"{path}: empty")
    header = [h.strip().lower() for h in rows[0]]
    col = lambda *names: next((header.index(n) for n in names if n in header), None)  # noqa: E731
    file_col, label_col, speaker_col = col("file", "path", "video", "name", "clip"), col("label", "emotion"), \
        col("speaker", "actor", "subject")
    if file_col is None or label_col is None:
        raise DataError(f"{path}: line 1 must name a file column (file) and a label column (label); got {rows[0]}")
    out = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(file_col, label_col):
            raise DataError(f"{path}:{number}: {len(row)} fields, expected {len(header)}")
        stem = Path(row[file_col].strip()).stem
        if stem in out:
            raise DataError(f"{path}:{number}: {stem} is listed twice")
        speaker = row[speaker_col].strip() if speaker_col is not None and speaker_col < len(row) else ""
        out[stem] = (speaker, row[label_col].strip())
    return out


def index_clips(root: Path, labels: str, warnings) -> pd.DataFrame:
    """videoid, path, speaker, source_label, label, dfew_label of every labelled clip under root."""
    conventions = labels.split(",")
    listed = None if set(conventions) <= set(CONVENTIONS) else read_label_csv(Path(labels))
    rows, seen = [], {}
    for dirpath, _, files in walk(root):
        for name in files:
            path = Path(dirpath) / name
            if not is_video(name):
                continue
            if path.stem in seen:
                raise DataError(f"{path}: same name as {seen[path.stem]}; clips are named by their file stem")
            seen[path.stem] = path
            if listed is None:
                tried = [from_name(path, c) for c in conventions]
                found = next((t for t in tried if not isinstance(t, str)), None)
                if found is None:
                    warnings("unlabelled", f"{path}: {'; '.join(tried)}; left out")
                    continue
                speaker, text = found
            elif path.stem in listed:
                speaker, text = listed[path.stem]
            else:
                warnings("unlabelled", f"{path}: not in {labels}; left out")
                continue
            label = abaw_id(text)
            if label is None:
                raise DataError(f"{labels}: label '{text}' of {path.name} is no class of {', '.join(EXPR_CLASSES)} "
                                f"(nor a DFEW class, an emotion word of {', '.join(RAVDESS_EMOTIONS)}, or 0..7)")
            rows.append(dict(videoid=path.stem, path=str(path), speaker=speaker or path.stem, source_label=text,
                             label=label, dfew_label=ABAW_TO_DFEW[label]))
    if listed is not None:
        missing = sorted(set(listed) - set(seen))
        if missing:
            warnings("missing clip", f"{labels}: {len(missing)} listed clips are not under {root} "
                     f"(first: {missing[0]})", len(missing))
        if not any(s for s, _ in listed.values()):
            warnings("no speaker", f"{labels}: no speaker column; each clip is its own speaker, so the folds "
                     "are NOT speaker-disjoint")
    if not rows:
        raise DataError(f"{root}: no labelled clip found ({labels})")
    return pd.DataFrame(rows).sort_values("videoid", ignore_index=True)


def speaker_folds(clips: pd.DataFrame, n_folds: int) -> np.ndarray:
    """Fold (1..k, k = min(n_folds, speakers)) of each clip, every speaker's clips in one fold."""
    sizes = clips.groupby("speaker").size().sort_values(ascending=False, kind="stable")
    k = min(n_folds, len(sizes))
    load, fold_of = np.zeros(k, int), {}
    for speaker, n in sizes.items():
        fold = int(load.argmin())
        fold_of[speaker] = fold + 1
        load[fold] += n
    return clips["speaker"].map(fold_of).to_numpy()


def print_class_map(clips: pd.DataFrame) -> None:
    pairs = clips.groupby(["source_label", "label", "dfew_label"]).size().reset_index(name="clips")
    table("Class map (source label -> ABAW id / DFEW id)", ["source", "ABAW", "DFEW", "clips"],
          [[r.source_label, f"{r.label} {EXPR_CLASSES[r.label]}",
            f"{r.dfew_label} {DFEW_CLASSES[r.dfew_label]}" if r.dfew_label >= 0 else "- (none: left out of DFEW)",
            r.clips] for r in pairs.itertuples()])


def prepare_clips(root, out, labels: str, crops: str = "", n_folds: int = 5, val_fold: int = 1, jobs: int = 2,
                  sample_rate: int = 16000, force: bool = False, spec=(2048, 1024, 128)) -> pd.DataFrame:
    """Index the clips under root and write the tables (module docstring). Returns the clips table."""
    root, out, warnings = Path(root), Path(out), WarningCounter()
    if not root.is_dir():
        raise DataError(f"{root}: clip folder not found")
    crop_root = Path(crops or root) / "cropped_aligned"
    clips = index_clips(root, labels, warnings)
    clips["fold"] = speaker_folds(clips, n_folds)
    if not 1 <= val_fold <= clips.fold.max():
        raise DataError(f"--val-fold {val_fold}: the {clips.speaker.nunique()} speakers make {clips.fold.max()} folds")
    results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
        delayed(prepare_media)(v, Path(p), out, sample_rate, force) for v, p in zip(clips.videoid, clips.path))
    infos = {}
    for info in track(results, total=len(clips), description="decoding audio", unit="clips"):
        report_media(info, warnings)
        infos[info["key"]] = info
    parts = []
    for clip in clips.itertuples():
        n = int(infos[clip.videoid].get("n_frames") or 0)
        if not n:
            warnings("unreadable", f"{clip.path}: no frame could be read; left out")
            continue
        folder = crop_root / clip.videoid
        crop_frames, crop_paths = affwild2.list_crops([folder] if folder.is_dir() else [])
        if not len(crop_frames):
            warnings("no crops", f"{folder}: no face crops (run crop_faces.py --out {crops or root}); "
                     "the image branch sees no face in this clip")
        split = "val" if clip.fold == val_fold else "train"
        columns = affwild2.txtid_frames(clip.videoid, np.arange(1, n + 1), np.full(n, clip.label), crop_frames,
                                        crop_paths)
        # one video per file: its name is the videoid even when it ends in _left/_right, which
        # txtid_frames would strip as the Aff-Wild2 two-person suffix
        parts.append(pd.DataFrame(columns | {"videoid": clip.videoid, "split": split, "template_row": -1}))
    if not parts:
        raise DataError(f"{root}: none of the {len(clips)} clips could be read")
    order = ["split", "txtid", "videoid", "frame", "label", "has_crop", "crop_path", "template_row"]
    frames = pd.concat(parts, ignore_index=True)[order]
    frames["split"] = pd.Categorical(frames["split"], ["train", "val", "test"])
    frames = frames.sort_values(["split", "txtid", "frame"], ignore_index=True)
    videos = pd.DataFrame([{"videoid": k} | i for k, i in sorted(infos.items())])
    videos = videos.reindex(columns=["videoid", "path", "fps", "n_frames", "duration", "has_audio", "audio_path",
                                     "audio_samples", "audio_offset", "sample_rate", "channels", "source_rate",
                                     "codec", "vfr", "frame_times", "corrupt_packets", "nonfinite_samples", "error"])
    for column in ("has_audio", "vfr"):
        videos[column] = videos[column].fillna(False).astype(bool)
    clips["dfew_clip"] = dfew_numbers(clips, crop_root)
    save_parquet(out / "frames.parquet", frames)
    save_parquet(out / "videos.parquet", videos)
    save_parquet(out / "clips.parquet", clips)
    counts = affwild2.split_counts(frames, videos)
    meta = dict(dataset="clips", root=str(root), labels=labels, crops=str(crop_root), sample_rate=sample_rate,
                template=None, release_list=None, classes=list(EXPR_CLASSES), val_fold=val_fold,
                class_map={r.source_label: [int(r.label), int(r.dfew_label)] for r in clips.itertuples()},
                counts=counts)
    write_json(out / "meta.json", meta)
    ensure_spectrograms(out, *spec, jobs=jobs, force=force, warnings=warnings)
    write_json(out / "meta.json", meta | dict(warnings=warnings.summary()))
    print_class_map(clips)
    table("Speaker-disjoint folds", ["fold", "split", "speakers", "clips", "frames", "with a face"],
          [[f, "val" if f == val_fold else "train", ", ".join(sorted(g.speaker.unique())), len(g),
            int(frames.videoid.isin(g.videoid).sum()), int((frames.videoid.isin(g.videoid) & frames.has_crop).sum())]
           for f, g in clips.groupby("fold")])
    if warnings.counts:
        table("Warnings", ["kind", "count"], [[k, v] for k, v in warnings.summary().items()])
    log(f"wrote {out}/frames.parquet ({len(frames):,} frames of {len(clips)} clips), videos.parquet, clips.parquet, "
        "audio/, spec/ and meta.json")
    if (clips.dfew_clip != "").any():
        log("the DFEW system's tables, from the same clips (DFEW ids, the same folds as test folds):")
        prepare_dfew(dfew_tree(clips, crop_root, out / "dfew_tree"), out / "dfew", jobs, sample_rate, force,
                     label_base=1)
    return clips


def dfew_numbers(clips: pd.DataFrame, crop_root: Path) -> list[str]:
    """A 5-digit DFEW clip number for each clip with a DFEW class and a crop folder, else ''."""
    numbers, n = [], 0
    for clip in clips.itertuples():
        if clip.dfew_label >= 0 and (crop_root / clip.videoid).is_dir():
            n += 1
            numbers.append(f"{n:05d}")
        else:
            numbers.append("")
    return numbers


def dfew_tree(clips: pd.DataFrame, crop_root: Path, tree: Path) -> Path:
    """The DFEW layout of the clips as symlinks (module docstring); returns its root."""
    import shutil
    shutil.rmtree(tree, ignore_errors=True)
    frames, videos = tree / "Clip" / "clip_224x224", tree / "Clip" / "original"
    frames.mkdir(parents=True)
    videos.mkdir(parents=True)
    usable = clips[clips.dfew_clip != ""]
    for clip in usable.itertuples():
        (frames / clip.dfew_clip).symlink_to((crop_root / clip.videoid).resolve(), target_is_directory=True)
        (videos / f"{clip.dfew_clip}{Path(clip.path).suffix}").symlink_to(Path(clip.path).resolve())
    for fold in sorted(usable.fold.unique()):
        for split, part in (("train", usable[usable.fold != fold]), ("test", usable[usable.fold == fold])):
            lines = [f"{c.dfew_clip},{c.dfew_label + 1}" for c in part.itertuples()]   # DFEW files count 1..7
            write_text(tree / "EmoLabel_DataSplit" / f"{split}(single-labeled)" / f"set_{fold}.csv",
                       "video_name,label\n" + "\n".join(lines) + "\n")
    return tree
