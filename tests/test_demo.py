"""`convscope demo` end to end on the small setting."""

from __future__ import annotations

import subprocess
import sys

import convscope as cs


def test_demo_small_runs_end_to_end_and_records_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "convscope", "demo", "--small", "--epochs", "1", "--no-serve",
         "--logdir", str(tmp_path), "--name", "demo", "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "convscope serve --logdir" in proc.stdout
    reader = cs.open_run(tmp_path / "demo")
    assert reader.meta["status"] == "ended"
    cfg = reader.config["demo"]
    assert cfg["epochs"] == 1
    df = reader.scalars()
    steps = df.dropna(subset=["train/loss"])
    # one row per optimiser step: ceil-ish of n_train / batch_size (a last single image dropped)
    expected_steps = cfg["n_train"] // cfg["batch_size"] + (cfg["n_train"] % cfg["batch_size"] > 1)
    assert len(steps) == expected_steps
    assert steps["step"].tolist() == list(range(1, expected_steps + 1))
    assert ((steps["train/acc"] >= 0) & (steps["train/acc"] <= 1)).all()
    test_acc = df["test/acc"].dropna()
    assert len(test_acc) == 1 and 0.0 <= test_acc.iloc[0] <= 1.0
    # attribution: 8 images with every method, and a paged set of 64 without Score-CAM
    assert reader.objects("attributions") == ["samples", "test-64"]
    assert reader.object("attributions", "test-64")["n"] == 64
    assert "score_cam" not in reader.object("attributions", "test-64")["methods"]
    # diagnosis: one batch, and the statistics of every test image
    assert reader.objects("diagnosis") == ["model", "test-set"]
    whole = reader.object("diagnosis", "test-set")
    assert whole["meta"]["items"] == cfg["n_test"]
    assert all(layer["shape"][0] == cfg["n_test"] for layer in whole["layers"])
    # CKA of the trained model against its initial weights: every conv / linear layer
    from convscope.formats import cka
    from convscope.training import DemoConfig

    m = cka.load(reader, "trained-vs-init")
    model = DemoConfig(**{**cfg, "blocks": tuple(cfg["blocks"])}).make_model()
    convs = [n for n, mod in model.named_modules() if type(mod).__name__ in ("Conv2d", "Linear")]
    assert len(convs) > 5 and m.layers_a == m.layers_b == convs
    assert m.label_a == "trained" and m.label_b == "initial weights"
    assert m.matrix.shape == (len(m.layers_a), len(m.layers_b)) and m.n_images >= 4


def test_failed_run_is_marked_failed(tmp_path):
    try:
        with cs.Run(tmp_path, "boom") as run:
            run.log_scalars(0, loss=1.0)
            raise RuntimeError("training crashed")
    except RuntimeError:
        pass
    reader = cs.open_run(tmp_path / "boom")
    assert reader.meta["status"] == "failed"
    assert reader.scalars()["loss"].tolist() == [1.0]
