"""The command line's contract for bad input, subcommand by subcommand: a bad value, path, CRS,
config or model ends with ONE line on stderr that names the fix, no traceback, and the
documented exit code (2 usage, 3 bad input, 4 model), before any search, pixel read, model
load or training step. Each case runs ``python -m xanysat.cli`` as a user would; the STAC URL
is a closed loopback port, so a case that got as far as a request would fail with another
message ("cannot reach the STAC API")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import xanysat
from xanysat import cli

pytestmark = pytest.mark.slow

CLOSED = "http://127.0.0.1:9"  # nothing listens here
BBOX = ["5.3240", "50.6310", "5.3285", "50.6340"]
QUERY = ["--stac", CLOSED, "--collections", "sentinel-2-l2a", "--bbox", *BBOX]
TINY = ["--model", "untrained-tiny"]
EMBED = ["embed", *QUERY, *TINY, "-o", "{out}/emb.zarr"]
PLAN = ["plan", *QUERY, *TINY]
LABELS = 'labels = "{labels}"\n'

# The files the cases name: {key} in a case's arguments is the path of FILES[key] (None: a path
# that does not exist; text: a file; a dict: a directory of files, None for a sub-directory).
FILES: dict[str, str | dict | None] = {
    "out": {},
    "missing": None,
    "file": "not a store\n",
    "docs": {"notes.txt": "precious\n"},
    "shelf": {"map.png": None},
    "labels": "a label raster (the checks only need it to exist)\n",
    "empty_model": {},
    "bad_toml": "steps = [\n",
    "pre_unknown": "stepz = 7\n",
    "pre_type": 'steps = "ten"\n',
    "pre_zero": "steps = 0\n",
    "ft_unknown": "epoch = 3\n",
    "ft_task": LABELS + 'task = "regression"\n',
    "ft_labels": 'labels = "no-such-labels.tif"\n',
    "ft_epochs": LABELS + "epochs = 0\n",
    "ft_model": LABELS + 'model = "no-such-model"\n',
}

CASES = [
    # subcommand, arguments, exit code, a fragment of the message that names the fix
    ("embed", [*EMBED, "--batch-size", "0"], 3, "--batch-size must be a positive whole number"),
    ("embed", [*EMBED, "--device", "tpu"], 3, "--device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ("embed", [*EMBED, "--tile-size", "100"], 3, "--tile-size must be a positive multiple of --patch-size (40 m)"),
    ("embed", [*EMBED, "--crs", "EPSG:99999"], 3, "give an EPSG code such as EPSG:32631"),
    ("embed", [*EMBED, "--crs", "EPSG:4326"], 3, "is not a projected CRS in metres"),
    ("embed", [*EMBED[:-1], "{file}"], 3, "is a file, and a Zarr store is a directory"),
    ("embed", [*EMBED[:-1], "{docs}"], 3, "holds no Zarr store; give a new path"),
    ("embed", [*EMBED, "--png", "{out}/map.jpg"], 3, "--png must end in .png"),
    ("embed", [*EMBED, "--stac", "earth-search"], 3, "--stac must be the URL of a STAC API"),
    ("embed", [*EMBED, "--sensor", "s9=sentinel-2-l2a"], 3, "unknown sensor 's9'; known sensors: "),
    ("embed", ["embed", "--stac", CLOSED, "--collections", "sentinel-2-l2a", "--bbox", "6", "51", "5", "50",
               "-o", "{out}/emb.zarr"], 3, "expected west < east and south < north"),
    ("embed", [*EMBED, "--datetime", "2021-13-01"], 3, "--datetime must be a date or an interval such as"),
    ("embed", [*EMBED, "--composite", "fortnightly"], 3, "--composite must be month, season, year or a pandas"),
    ("embed", [*EMBED, "--model", "no-such-model"], 4, "use 'base', 'default', 'untrained-tiny' or a directory"),
    ("embed", [*EMBED, "--batch-size", "many"], 2, "argument --batch-size: invalid int value: 'many'"),
    ("plan", [*PLAN, "--throughput", "0"], 3, "--throughput must be a positive number of tiles per second"),
    ("plan", [*PLAN, "--max-items", "0"], 3, "--max-items must be a whole number of at least 1"),
    ("plan", [*PLAN, "--model", "{empty_model}"], 4, "has no config.json or model.safetensors"),
    ("map", ["map", "{missing}", "-o", "{out}/map.jpg"], 3, "--output must end in .png, .tif or .tiff"),
    ("export", ["export", "{missing}", "-o", "{out}/emb.tif"], 3, "no Zarr store at"),
    ("map", ["map", "{missing}", "-o", "{shelf}/map.png"], 3, "map.png is a directory; give a file path"),
    ("info", ["info", "--verbose"], 2, "unrecognized arguments: --verbose"),
    ("pretrain", ["pretrain", "--config", "{missing}"], 3, "No such file or directory; give the path of a TOML"),
    ("pretrain", ["pretrain", "--config", "{bad_toml}"], 3, "is not valid TOML"),
    ("pretrain", ["pretrain", "--config", "{pre_unknown}"], 3, "unknown settings ['stepz']; known: ["),
    ("pretrain", ["pretrain", "--config", "{pre_type}"], 3, "steps must be int, got 'ten' (str); e.g. steps = 1"),
    ("pretrain", ["pretrain", "--steps", "0"], 3, "--steps must be a whole number of at least 1"),
    ("pretrain", ["pretrain", "--out", "{file}"], 3, "is a file; give a run directory"),
    ("probe", ["probe", "--config", "{missing}", "--map", "{out}/classes.png"], 3, "--map must end in .tif, .tiff"),
    ("probe", ["probe"], 2, "the following arguments are required: --config"),
    ("finetune", ["finetune", "--config", "{ft_task}"], 3, "task must be one of 'segmentation', 'classification'"),
    ("finetune", ["finetune", "--config", "{ft_labels}"], 3, "does not exist; give the path of a label raster"),
    ("finetune", ["finetune", "--config", "{ft_model}"], 4, "unknown model 'no-such-model'"),
    ("evaluate", ["evaluate", "--model", "no-such-model"], 4, "is not a directory; give a model directory"),
    ("evaluate", ["evaluate", "--model", "{model}", "--card", "{out}"], 3, "lacks config.json, log.csv, monitor.csv"),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """FILES written under a temporary directory, and ``model``: a saved tiny model."""
    import torch

    from xanysat import AnySat, AnySatConfig
    from xanysat.nn.checkpoint import save_pretrained

    root = tmp_path_factory.mktemp("bad-input")
    out = {name: str(root / name) for name in FILES}
    for name, content in FILES.items():
        path = root / name
        if isinstance(content, dict):
            path.mkdir()
            for child, text in content.items():
                (path / child).mkdir() if text is None else (path / child).write_text(text)
        elif content is not None:
            path.write_text(content.format(**out))
    torch.manual_seed(0)
    out["model"] = str(save_pretrained(AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",))),
                                       root / "model"))
    return out


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # warnings would show: none may
    return subprocess.run([sys.executable, "-m", "xanysat.cli", *args], check=False, capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


@pytest.mark.parametrize(("command", "args", "code", "fragment"), CASES,
                         ids=[f"{c[0]}-{i}-exit{c[2]}" for i, c in enumerate(CASES)])
def test_bad_input_one_line_and_exit_code(command, args, code, fragment, paths, tmp_path):
    done = run_cli(*(a.format(**paths) for a in args), cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if code == 2:  # argparse: its usage lines, then one error line
        assert lines[0].startswith("usage: xanysat") and all(line.startswith(" ") for line in lines[1:-1]), lines
        assert re.match(rf"xanysat( {command})?: error: ", lines[-1]), lines
    else:
        kind = "model error" if code == 4 else "error"
        assert len(lines) == 1 and lines[0].startswith(f"xanysat {command}: {kind}: "), lines
    assert fragment in lines[-1]
    assert not list(tmp_path.iterdir())  # nothing written where it ran
    assert sorted(os.listdir(paths["out"])) == [] and os.listdir(paths["docs"]) == ["notes.txt"]


def test_every_subcommand_is_walked():
    subcommands = next(a for a in cli._parser()._actions if isinstance(a, cli.argparse._SubParsersAction))
    assert set(subcommands.choices) == {case[0] for case in CASES}
    assert {case[2] for case in CASES} == {cli.EXIT_USAGE, cli.EXIT_INPUT, cli.EXIT_MODEL}


def test_version(tmp_path):
    done = run_cli("--version", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"xanysat {xanysat.__version__}\n", "")


def test_model_checks_agree_with_the_hub(paths):
    """The CLI checks model names and saved-model files without loading torch: the same ones the
    hub and ``save_pretrained`` know."""
    from xanysat.nn import hub

    assert set(cli.MODEL_NAMES) == {"base", hub.DEFAULT, hub.UNTRAINED_TINY}
    assert all((Path(paths["model"]) / name).is_file() for name in cli.MODEL_FILES)
