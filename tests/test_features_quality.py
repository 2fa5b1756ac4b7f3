"""cs.features.maximize on a trained demo-like model: the optimised inputs beat random noise and
the best of 256 dataset images for >= 90 % of the units (default settings)."""

from __future__ import annotations

import pytest
import torch

import convscope as cs
from convscope.training import DemoConfig, auto_threads, train_demo


@pytest.fixture(scope="module")
def trained():
    old = torch.get_num_threads()
    torch.set_num_threads(auto_threads())
    # a quickly trained demo model: ~10-20 s here, ~40 % test accuracy on 10 classes (chance 10 %)
    cfg = DemoConfig(n_train=3000, n_test=256, epochs=4, width=8, batch_size=64)
    res = train_demo(cfg, quiet=True)
    yield res
    torch.set_num_threads(old)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["layer2", "layer3.0.conv2"])
def test_optimised_inputs_beat_noise_and_best_dataset_image(trained, layer):
    model = trained.model.eval()
    assert trained.history.test_acc > 0.2  # it did learn something
    data = trained.test_images[:256]
    n_units = cs.features.live(model, layer, data[0]).shape[0]
    units = list(range(n_units))
    imgs, vals = cs.features.maximize(model, layer, units, quiet=True, return_values=True)
    objective = cs.features.channel(layer, units)

    def best_of(x: torch.Tensor) -> torch.Tensor:
        acts = cs.model.capture(model, x, layer)[layer]
        return acts.mean((2, 3)).max(0).values  # best image per channel

    # the returned values are the objective of the returned images
    again = objective(cs.model.capture(model, imgs, layer))
    assert torch.allclose(again, vals, atol=1e-4)
    best_data = best_of(data)
    g = torch.Generator().manual_seed(0)
    best_noise = best_of(torch.rand(256, 3, 32, 32, generator=g))
    beat_data = (vals > best_data).float().mean().item()
    beat_noise = (vals > best_noise).float().mean().item()
    print(f"{layer}: {n_units} units, beat best of 256 data images {beat_data:.0%}, "
          f"beat best of 256 noise images {beat_noise:.0%}, test acc {trained.history.test_acc:.2f}")
    assert beat_data >= 0.9
    assert beat_noise >= 0.9
