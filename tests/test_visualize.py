"""The walkthrough's figures say which model they show and what their colours mean."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display in tests; the notebooks use the inline backend

import torch  # noqa: E402

from mlic.visualize import show_cross_attention, show_predictions  # noqa: E402


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text)]


def test_the_attention_figure_has_one_colour_scale_from_zero_and_names_its_model():
    generator = torch.Generator().manual_seed(0)
    attention = torch.softmax(torch.randn(3, 4, 5, generator=generator).flatten(1), dim=1)
    attention = attention.view(3, 4, 5)
    fig = show_cross_attention(
        torch.rand(3, 32, 40),
        attention,
        [0, 2],
        ["a", "b", "c"],
        [0, 0, 0],
        [1, 1, 1],
        title="run-x, best epoch 3",
    )
    maps = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "magma"]
    assert len(maps) == 2
    (low, high), *others = [im.get_clim() for im in maps]
    assert all(clim == (low, high) for clim in others)  # one scale for every query
    # from 0 to the largest weight drawn (bilinear upsampling never exceeds the tokens' largest)
    assert low == 0.0 and 0.0 < high <= max(float(attention[k].max()) for k in (0, 2)) + 1e-6
    assert high == max(float(im.get_array().max()) for im in maps)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1
    assert "1/20" in bars[0].get_ylabel()  # the even spread over 4x5 tokens
    assert "run-x, best epoch 3" in _texts(fig)


def test_the_predictions_figure_names_its_model():
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    scores = torch.tensor([[0.9, 0.6, 0.2], [0.1, 0.8, 0.3]])
    fig = show_predictions(
        torch.rand(2, 3, 16, 16),
        targets,
        scores,
        ["a", "b", "c"],
        [0, 0, 0],
        [1, 1, 1],
        thresholds=0.5,
        title="run-y, best epoch 2",
    )
    texts = _texts(fig)
    assert "run-y, best epoch 2" in texts
    assert any("- c 0.20" in t and "! b 0.60" in t for t in texts)  # missed c, false alarm b
