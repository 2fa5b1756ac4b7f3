"""The command line: --help, --version, runs, report, compact, serve's bind warning."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest

import convscope as cs
from convscope.cli import main

from .conftest import free_port


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"convscope {cs.__version__}"
    out = subprocess.run(
        [sys.executable, "-m", "convscope", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in ("demo", "serve", "report", "runs", "compact"):
        assert cmd in out


def _run_with_scalars(tmp_path):
    with cs.Run(tmp_path, "r1", config={"lr": 0.25}) as run:
        for s in range(30):
            run.log_scalars(s, loss=1000.0 + s)
    return tmp_path / "r1"


def test_report_is_self_contained_and_holds_the_data(tmp_path, capsys):
    run_dir = _run_with_scalars(tmp_path)
    out = tmp_path / "report.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    html = out.read_text()
    # no network needed: no element loads anything from outside the file
    external = []

    class _Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            for k, v in attrs:
                if k in ("src", "href") and v and not v.startswith(("#", "data:")):
                    external.append((tag, k, v))

    _Tags().feed(html)
    assert external == []
    assert "Plotly.newPlot" in html
    assert "config.lr" in html and "0.25" in html
    # the logged values are in the figure's JSON (plotly ships numpy arrays as base64 typed arrays)
    figs = re.findall(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', html, re.S)
    assert figs
    data = json.loads(figs[0])
    assert data[0]["meta"] == {"run": "r1", "tag": "loss", "kind": "raw"}
    y = data[0]["y"]
    if isinstance(y, dict):  # {"dtype": "f8", "bdata": base64}
        import base64

        import numpy as np

        y = np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"]).tolist()
    assert y == [1000.0 + s for s in range(30)]


def test_report_of_empty_run_names_the_recording_call(tmp_path):
    with cs.Run(tmp_path, "empty"):
        pass
    out = tmp_path / "r.html"
    main(["report", str(tmp_path / "empty"), "--out", str(out)])
    assert "run.log_scalars(step, loss=..., acc=...)" in out.read_text()


def test_runs_and_compact_commands(tmp_path, capsys):
    run_dir = _run_with_scalars(tmp_path)
    assert main(["runs", "--logdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "r1" in out and "scalars=30" in out and "ended" in out
    assert main(["compact", str(run_dir)]) == 0
    assert "scalars: 1 -> 1 parts" in capsys.readouterr().out


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convscope: error:") and "does not exist" in err
    assert main(["serve", "--logdir", str(tmp_path / "nope")]) == 2
    assert "record a run first" in capsys.readouterr().err


def test_serve_warns_when_binding_a_non_loopback_address(tmp_path):
    _run_with_scalars(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "convscope", "serve", "--logdir", str(tmp_path), "--host",
         "0.0.0.0", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stderr.readline()
        assert "WARNING" in line and "0.0.0.0" in line
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    proc = subprocess.Popen(
        [sys.executable, "-m", "convscope", "serve", "--logdir", str(tmp_path), "--port",
         str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert "http://127.0.0.1:" in proc.stdout.readline()
        time.sleep(0.5)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "WARNING" not in err


def test_diagnose_command_loads_the_checkpoint_and_records(tmp_path, capsys):
    import torch

    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    with torch.no_grad():
        model.layer1[0].bn1.bias.fill_(-100.0)  # dead ReLUs after it
    x = torch.rand(6, 3, 32, 32)
    with cs.Run(tmp_path, "d", quiet=True) as run:
        run.log_checkpoint(model)
        run.log_feature_maps(model, x)
    assert main(["diagnose", str(tmp_path / "d"), "--record", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "dead-maps" in out and "layer1.0.relu1" in out
    stored = cs.open_run(tmp_path / "d").table("diagnosis_findings")
    assert "dead-maps" in stored["code"].tolist()
    empty = tmp_path / "e"
    with cs.Run(tmp_path, "e", quiet=True) as run:
        run.log_checkpoint(model)
    assert main(["diagnose", str(empty)]) == 2
    assert "--inputs" in capsys.readouterr().err


def test_diagnose_and_analyze_never_unpickle_without_trust(tmp_path, capsys):
    """A run directory holding a crafted whole-module pickle (what an older convscope wrote, or
    an attacker placed): the commands refuse it and say how to opt in; nothing runs."""
    import torch

    from .test_checkpoints import Exploit

    marker = tmp_path / "marker"
    with cs.Run(tmp_path, "evil", quiet=True) as run:
        run.log_scalars(0, loss=1.0)
        run.log_array("samples", "x", torch.rand(2, 3, 8, 8))
    (run.path / "checkpoints").mkdir()
    torch.save(Exploit(marker), run.path / "checkpoints" / "model.pt")
    assert main(["diagnose", str(run.path)]) == 2
    err = capsys.readouterr().err
    assert "--trust-checkpoints" in err and not marker.exists()
    assert main(["analyze", str(run.path), "--what", "diagnosis"]) == 2
    assert "--trust-checkpoints" in capsys.readouterr().err and not marker.exists()
    # the opt-in is real: it unpickles (which is why it must be asked for)
    main(["diagnose", str(run.path), "--trust-checkpoints"])
    assert marker.read_text() == "pwned"
