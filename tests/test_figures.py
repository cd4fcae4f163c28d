"""The lock file and the demo figures: what the README shows is what demo_figures.json holds, and
make demo's last step tells a drifted figure from a reproduced one."""
import json
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import check_figures

ROOT = Path(__file__).resolve().parent.parent


def pins(path: Path) -> dict[str, list[str]]:
    """name -> the versions pinned (one per Python/platform marker) in a uv lock."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        m = check_figures.PINNED.match(line.strip())
        if m:
            out.setdefault(m.group(1).lower().replace("_", "-"), []).append(m.group(2))
    return out


def test_lock_pins_every_requirement_within_its_bounds_with_hashes():
    locks = [("requirements.txt", "requirements.lock"), ("requirements-nodeps.txt", "requirements-nodeps.lock")]
    for source, lock in locks if (ROOT / locks[1][0]).is_file() else locks[:1]:
        locked = pins(ROOT / lock)
        for line in (ROOT / source).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                req = Requirement(line)
                name = req.name.lower().replace("_", "-")
                assert name in locked, f"{req.name} is in {source} but not in {lock}: run make lock"
                for version in locked[name]:
                    assert req.specifier.contains(version), f"{lock} pins {name}=={version}, outside {req}"
    locked = pins(ROOT / "requirements.lock")
    # Every pin carries its hashes (pip then installs in hash-checking mode: the very files measured).
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    for line, after in zip(lines, lines[1:]):
        if check_figures.PINNED.match(line.strip()):
            assert after.strip().startswith("--hash=sha256:"), line
    assert locked["torch"] == ["2.14.1"] and locked["torchaudio"] == ["2.11.1"]   # as the README's figures


def readme_rows(title_pattern: str) -> dict[str, list[str]]:
    """The markdown table that follows the line matching title_pattern: first cell -> cells."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.search(title_pattern, line))
    rows = {}
    for line in lines[start + 1:]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_readme_tables_show_the_recorded_demo_figures():
    book = json.loads((ROOT / "demo_figures.json").read_text())
    readme = (ROOT / "README.md").read_text()
    lock = book["measured_with"]["lock"]
    assert readme.count(f"requirements.lock {lock}") >= 2   # the Aff-Wild2 and the DFEW tables name it
    seeds = sorted(book["dfew"], key=int)
    assert len(seeds) >= 3
    rows = readme_rows(r"^Mean test UAR over the 5 folds")
    header = rows.pop("setting")
    for seed in seeds:
        column = header.index(f"seed {seed}")
        for key, value in book["dfew"][seed].items():
            setting, metric = key.rsplit(" ", 1)
            if metric == "UAR":
                assert rows[setting][column] == f"{value:.4f}", (seed, setting)
    for name, value in book["affwild2"]["0"].items():
        assert re.search(rf"│ {re.escape(name)} +│ +{value:.2f} │", readme), name


def demo_with(tmp_path, figures: dict) -> Path:
    run = tmp_path / "runs" / "temporal" / "demo-ablation_seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(
        {k: {"mean_test_uar": v, "mean_test_war": v + 0.05} for k, v in figures.items()}))
    return tmp_path


def test_check_says_same_or_names_what_differs(tmp_path, monkeypatch, capsys):
    book = {"measured_with": {"lock": check_figures.lock_sha256(), "threads": check_figures.threads(),
                              "python": "3.11"},
            "dfew": {"0": {"image UAR": 0.7, "image WAR": 0.75}}}
    monkeypatch.setattr(check_figures, "FIGURES", tmp_path / "figures.json")
    check_figures.FIGURES.write_text(json.dumps(book))
    demo = demo_with(tmp_path / "same", {"image": 0.70001})   # rounded as the README shows it
    assert check_figures.main(["--dataset", "dfew", "--seed", "0", "--demo", str(demo)])
    assert "figures: same as README" in capsys.readouterr().out
    demo = demo_with(tmp_path / "moved", {"image": 0.6511})
    assert not check_figures.main(["--dataset", "dfew", "--seed", "0", "--demo", str(demo)])
    out = capsys.readouterr().out
    assert "differs from README" in out and "image UAR 0.6511 (README 0.7)" in out
    with pytest.raises(SystemExit):
        check_figures.main(["--dataset", "dfew", "--seed", "0", "--demo", str(demo), "--strict"])
    assert check_figures.main(["--dataset", "dfew", "--seed", "3", "--demo", str(demo)])   # no figures: says so
    assert "has none for dfew seed 3" in capsys.readouterr().out
    check_figures.main(["--dataset", "dfew", "--seed", "0", "--demo", str(demo), "--update"])
    assert json.loads(check_figures.FIGURES.read_text())["dfew"]["0"] == {"image UAR": 0.6511, "image WAR": 0.7011}


def test_packages_off_the_lock_are_named(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("pytest==0.0.1 \\\n    --hash=sha256:00\nnot-installed-anywhere==1.0 ; python_version < '3'\n"
                    "numpy==1.0 ; sys_platform == 'nonexistent'\n")
    assert check_figures.off_lock(lock) == [f"pytest {pytest.__version__} (lock 0.0.1)"]
