"""adversarials.png (adv_jax.figures.adversarial_grid): the difference row is a diverging colour
map scaled per image, not saturated black and white, and each column is titled with its
prediction on the adversarial and its per-pixel RMS distortion."""

import numpy as np
import pytest

from adv_jax import figures

N = 4


@pytest.fixture
def drawn(tmp_path, monkeypatch):
    """adversarial_grid on grey images plus a ramp of changes (a different size per column, the
    third unchanged): (figure, x, x_adv, predicted); the figure is kept open for inspection."""
    kept = []
    monkeypatch.setattr(figures.plt, "close", kept.append)
    x = np.full((N, 28, 28, 1), 0.5, np.float32)
    ramp = np.linspace(-1, 1, 28 * 28, dtype=np.float32).reshape(1, 28, 28, 1)
    x_adv = x + ramp * np.array([0.05, 0.2, 0.0, 0.4], np.float32).reshape(N, 1, 1, 1)
    predicted = np.array([3, 1, 4, 1])
    path = figures.adversarial_grid(x, x_adv, tmp_path / "adversarials.png", labels=np.arange(N),
                                    predicted=predicted, columns=N)
    assert path.stat().st_size > 0
    yield kept[0], x, x_adv, predicted
    figures.plt.close(kept[0])


def pixels(fig, ax) -> np.ndarray:
    """The RGB pixels (h, w, 3) in [0, 1] drawn inside one axes, its frame left out."""
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0
    box, height = ax.get_window_extent(), image.shape[0]
    return image[int(height - box.y1) + 3:int(height - box.y0) - 3, int(box.x0) + 3:int(box.x1) - 3]


def test_difference_row_is_diverging_per_image_and_not_saturated(drawn):
    fig, x, x_adv, _ = drawn
    row = fig.axes[2 * N:]
    for c in (0, 1, 3):
        limit = float(np.abs(x_adv[c] - x[c]).max())
        assert row[c].images[0].get_clim() == pytest.approx((-limit, limit))
        rgb = pixels(fig, row[c])
        chroma = rgb.max(-1) - rgb.min(-1)
        assert (chroma > 0.15).mean() > 0.3, "the differences are drawn in grey, not a diverging map"
        assert (rgb[..., 0] > rgb[..., 2] + 0.2).any() and (rgb[..., 2] > rgb[..., 0] + 0.2).any()
        ends = row[c].images[0].cmap([0.0, 1.0])[:, :3]  # the map's two ends (gray: black, white)
        extreme = (np.abs(rgb[..., None, :] - ends).max(-1) < 0.03).any(-1)
        assert extreme.mean() < 0.2, "saturated: most pixels at the map's ends"
        assert len(np.unique(np.round(rgb, 2).reshape(-1, 3), axis=0)) > 20


def test_columns_are_titled_with_the_prediction_and_the_rms_distortion(drawn):
    fig, x, x_adv, predicted = drawn
    titles = [ax.get_title() for ax in fig.axes[:N]]
    rms = np.sqrt(((x_adv - x) ** 2).mean(axis=(1, 2, 3)))
    for c in range(N):
        assert f"rms {rms[c]:.3f}" in titles[c], titles[c]
        assert f"-> {predicted[c]}" in titles[c] and f"label {c}" in titles[c], titles[c]
    assert "rms 0.000" in titles[2] and fig.axes[2 * N + 2].get_xlabel() == "±0"
