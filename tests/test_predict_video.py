"""predict_video.py: runs rebuilt from their folders predict what they predicted in training, the
ensemble is applied as make_submission.py applies it, and a real video gets its CSV, txt and PNG."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import ensemble
import predict_video
from utils.classes import EXPR_CLASSES, EXPR_HEADER
from utils.evaluation.ensemble import Member, apply_spec, load_members, softmax
from utils.evaluation.preds import load_preds, order_by_key
from utils.evaluation.video import Runner, member_probs
from utils.files import DataError
from utils.runs import read_json
from utils.training.data import load_frames, load_videos
from utils.training.engine import setup_distributed


@pytest.fixture(scope="module")
def demo_ensemble(fusion_run, image_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens")
    return ensemble.main(["--runs", f"{fusion_run}:logits_fusion", f"{fusion_run}:logits_audio", str(image_run),
                          "--name", "pv", "--out-dir", str(out)])


def test_rebuilt_runs_and_the_ensemble_match_the_training_outputs(demo_data, image_run, audio_run, fusion_run,
                                                                   demo_ensemble):
    frames = load_frames(demo_data, ("val",))
    frames = frames.iloc[order_by_key(frames.txtid.to_numpy().astype(str), frames.frame.to_numpy())]
    frames = frames.reset_index(drop=True)
    runner = Runner(demo_data, frames, load_videos(demo_data, frames), setup_distributed("cpu"), "fp32")
    for run, key in ((image_run, "logits"), (audio_run, "logits"), (fusion_run, "logits_fusion")):
        saved = load_preds(run / "preds" / "val.npz", keys=[key])
        assert np.array_equal(saved["frame"], frames.frame.to_numpy())
        np.testing.assert_allclose(runner(run)[key], saved[key], atol=2e-4, rtol=1e-3)
    spec = read_json(demo_ensemble / "ensemble.json")
    members = [Member(m["name"], m["runs"], m["head"]) for m in spec["members"]]
    probs_saved, ref = load_members(members, "val")
    ours = apply_spec(member_probs(runner, members, softmax), frames.txtid.to_numpy(), spec)
    theirs = apply_spec(probs_saved, ref["txtid"], spec)   # what make_submission.py writes
    assert (ours == theirs).mean() > 0.999


def test_a_real_video_gets_its_csv_txt_and_timeline(real_clips, demo_ensemble, tmp_path, capsys):
    clip = real_clips / "1001_DFA_SAD_XX.flv"
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    out = tmp_path / "pred"
    predict_video.main([str(clip), str(bad), "--ensemble", str(demo_ensemble), "--out", str(out)])
    assert "broken.mp4: unreadable" in capsys.readouterr().err
    csv = pd.read_csv(out / f"{clip.stem}.csv")
    assert list(csv.columns) == ["frame", "time", "has_face", *EXPR_CLASSES, "label", "label_name"]
    assert csv.frame.tolist() == list(range(1, len(csv) + 1)) and len(csv) >= 55
    assert csv.has_face.mean() >= 0.95 and np.allclose(csv[list(EXPR_CLASSES)].sum(axis=1), 1, atol=1e-3)
    assert np.allclose(np.diff(csv.time), 1 / 29.97, atol=2e-3)
    spec = read_json(demo_ensemble / "ensemble.json")
    scores = np.log(np.maximum(csv[list(EXPR_CLASSES)].to_numpy(), 1e-6)) + np.asarray(spec.get("bias") or 0.0)
    assert (scores.argmax(1) == csv.label).mean() > 0.98   # rounding to 5 decimals aside
    lines = (out / "per_video" / f"{clip.stem}.txt").read_text().splitlines()
    assert lines[0] == EXPR_HEADER and [int(v) for v in lines[1:]] == csv.label.tolist()
    png = out / f"{clip.stem}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < png.stat().st_size < 300_000
    assert not (out / "broken.csv").exists()


def test_dfew_runs_and_missing_inputs_are_refused(tmp_path):
    run = tmp_path / "runs" / "image" / "x_seed0"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"config": {"dataset": "dfew", "model": "resnet18"}}')
    (run / "best.pt").write_bytes(b"")
    with pytest.raises(DataError, match="predicts clips"):
        Runner(tmp_path, pd.DataFrame(), pd.DataFrame(), None, "fp32")(run)
    with pytest.raises(DataError, match="exactly one of"):
        predict_video.main(["video.mp4", "--out", str(tmp_path)])


def test_a_video_named_like_a_two_person_txtid_keeps_its_videoid(tmp_path):
    """'interview_left.mp4' is one video: its frames and its sound share the videoid."""
    from conftest import make_av, tone
    from utils.console import WarningCounter
    from utils.evaluation.video import video_tables
    path = make_av(tmp_path / "interview_left.mp4", n_frames=10, audio=tone(0.5, 16000))
    frames, videos = video_tables([("interview_left", path, 10)], tmp_path / "crops", tmp_path / "data", 16000,
                                  WarningCounter())
    assert set(frames["videoid"]) == set(videos["videoid"]) == {"interview_left"}


def test_an_audio_run_trained_at_another_sample_rate_is_refused(tmp_path):
    """A log-mel run hears its mel grid at its own rate: 16 kHz sound would be placed wrongly."""
    from types import SimpleNamespace
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "meta.json").write_text('{"sample_rate": 22050}')
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "meta.json").write_text('{"sample_rate": 16000}')
    with pytest.raises(DataError, match="trained on sound at 22050 Hz.*pass --sample-rate 22050"):
        Runner.audio(SimpleNamespace(data=tmp_path / "new"), tmp_path / "run", {"data": str(tmp_path / "train")})


def test_a_missing_setting_names_the_run_and_other_key_errors_stay_themselves(tmp_path, monkeypatch):
    import utils.evaluation.video as video
    run = tmp_path / "runs" / "image" / "x_seed0"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"")
    (run / "config.json").write_text('{"config": {"img_size": 112}}')
    with pytest.raises(DataError, match=r"x_seed0/config.json: no 'model' setting"):
        Runner(tmp_path, pd.DataFrame(), pd.DataFrame(), None, "fp32")(run)
    (run / "config.json").write_text('{"config": {"model": "resnet18", "img_size": 112}}')

    def broken(*args, **kwargs):   # a KeyError that has nothing to do with the run's settings
        raise KeyError("stage3")
    monkeypatch.setattr(video, "create_model", broken)
    with pytest.raises(KeyError, match="stage3"):
        Runner(tmp_path, pd.DataFrame(), pd.DataFrame(), None, "fp32")(run)


def test_the_sample_rate_comes_from_the_runs_data_folder_and_an_explicit_other_one_is_refused(tmp_path, monkeypatch,
                                                                                            capsys):
    import json
    data = tmp_path / "data" / "affwild2"
    data.mkdir(parents=True)
    (data / "meta.json").write_text('{"sample_rate": 22050}')

    def make_run(name: str, config: dict):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"config": config}))
        (run / "best.pt").write_bytes(b"")
        return str(run)
    audio = make_run("audio", {"spec_mean_db": -40.0, "data": str(data)})
    fusion = make_run("fusion", {"image_offsets": [0], "image": "unused", "audio": audio, "data": str(data)})
    elsewhere = make_run("moved", {"spec_mean_db": -40.0, "data": str(tmp_path / "gone")})
    broken = make_run("broken", {"spec_mean_db": -40.0, "data": str(tmp_path / "broken")})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "meta.json").write_text('{"dataset": "affwild2"}')

    class Decoded(Exception):
        pass

    def tables(done, crops, out, sample_rate, warnings):   # stop where the sound would be decoded
        raise Decoded(sample_rate)
    monkeypatch.setattr(predict_video, "crop_video", lambda *a: {"error": "", "frames": 5, "frames_examined": 5,
                                                            "frames_with_face": 1})
    monkeypatch.setattr(predict_video, "video_tables", tables)

    def rate(*args):
        with pytest.raises(Decoded) as got:
            predict_video.main(["v.mp4", "--out", str(tmp_path / "pred"), *args])
        return got.value.args[0]
    assert rate("--run", audio) == rate("--run", fusion) == rate("--run", audio, "--sample-rate", "22050") == 22050
    with pytest.raises(DataError, match=r"audio: trained on sound at 22050 Hz, --sample-rate 16000 given; "
                                        r"pass --sample-rate 22050"):
        predict_video.main(["v.mp4", "--run", fusion, "--sample-rate", "16000", "--out", str(tmp_path / "pred")])
    # A run whose data folder is not here: 16 kHz or the rate given, and a warning saying so.
    assert rate("--run", elsewhere) == 16000 and rate("--run", elsewhere, "--sample-rate", "8000") == 8000
    assert "gone/meta.json is not here" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"broken/meta.json: no readable sample_rate"):
        predict_video.main(["v.mp4", "--run", broken, "--out", str(tmp_path / "pred")])
    with pytest.raises(DataError, match=r"--sample-rate -16000: a rate in Hz"):
        predict_video.main(["v.mp4", "--run", audio, "--sample-rate", "-16000", "--out", str(tmp_path / "pred")])


def test_a_video_with_no_decodable_frame_is_skipped_in_one_line(tmp_path, monkeypatch, capsys):
    """crop_video's "frames" counts the video's packets: 5 packets, none decoded, is nothing to predict."""
    monkeypatch.setattr(predict_video, "crop_video", lambda *a: {"error": "", "frames": 5, "frames_examined": 0,
                                                                 "frames_with_face": 0})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"config": {"model": "resnet18"}}')
    (run / "best.pt").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 1 videos could be read"):
        predict_video.main(["v.mp4", "--run", str(run), "--out", str(tmp_path / "pred")])
    assert "v.mp4: no frame could be decoded; skipped" in capsys.readouterr().err
