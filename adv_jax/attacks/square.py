"""Square attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient
black-box adversarial attack via random search"): score-based random search in an L-inf or L2
ball, AutoAttack's last stage (Square(epsilon, norm, queries=5000, p_init=0.8), one restart).

It minimizes the margin loss, which only needs logits (no gradient):

    m(x') = Z_label - max_{j != label} Z_j        untargeted (target = -1)
    m(x') = max_{j != target} Z_j - Z_target      targeted
    m < 0: adversarial

From a random start on the ball's surface, each step changes one random s x s window of the
current best point and keeps the candidate if it lowers m (the margin decides acceptance, not
the cross-entropy some official versions use):

  linf  start: vertical stripes, each column (and channel) x + or - epsilon. Step: every channel
        of the window set to x + or - epsilon (a random sign per channel).
  l2    start: a 5 x 5 grid of "meta pseudo-gaussian" squares (`square_pattern`), each with a
        random sign and orientation, scaled to |delta|_2 = epsilon. Step: a second window is
        zeroed and the first gets a new pseudo-gaussian plus its old direction, rescaled so
        the freed mass moves there; the whole perturbation is then rescaled to epsilon.
Both clip to the box [0, 1]. The window's side follows p(i), the fraction of pixels changed:
p_init halved each time i * 10000 / queries passes 10, 50, 200, 500, 1000, 2000, 4000, 6000
and 8000 (`window_side`), as the official `p_selection` with its rescaled schedule; with
rescale_schedule=False (AutoAttack's, as in its reference code) each time i itself does.

Queries: the first forward pass is at x itself (already adversarial: x is returned, 1 query),
the second at the start, then one per step until m < 0 or `queries` passes in all; an example
done early neither queries nor changes after. Diagnostics: {"queries", "evals": 0}. The output
is the lowest-margin point found, inside the ball and the box. Loops are `lax.while_loop`s
whose randomness is folded from the step index, so a vmapped batch gives each example what it
gets alone.

Differences from the official code (github fra31/auto-attack, autoattack/square.py): windows are
drawn uniformly among all H - s + 1 positions per axis, as the paper says (the official
`random_int(0, h - s)` never picks the last); each example draws its own windows and
orientations (the official code shares them across the batch); the L2 start's grid is 5 x 5
squares of side min(H, W) // 5 (the official one's for H, W >= 25); `queries` counts the pass
at x and the start (the official runs n_queries steps after its start).

Units: pixels in [0, 1]; `epsilon` is the largest per-pixel change (linf) or the Euclidean norm
of the whole (H, W, C) perturbation (l2).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax.attacks.carlini_wagner import margin
from adv_jax.attacks.common import LogitsFn
from adv_jax.attacks.gradient import check_norm

__all__ = ["Square", "fraction_changed", "rectangle_pattern", "square_pattern", "window_side"]

SCHEDULE_LENGTH = 10000  # the query count the official schedule's halving points are given for
HALVING_POINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
GRID_CELLS = 5  # L2 start: squares per row and per column
_TINY = 1e-12  # keeps an empty window's normalization finite


def fraction_changed(iteration: int, p_init: float, queries: int, rescale: bool = True) -> float:
    """p(i), the fraction of pixels step `iteration` (0-based, a Python int) changes: p_init
    halved once per HALVING_POINTS entry that i * SCHEDULE_LENGTH / queries (rescale) or i has
    passed."""
    rescaled = int(iteration / queries * SCHEDULE_LENGTH) if rescale else iteration
    return p_init / 2 ** sum(rescaled > point for point in HALVING_POINTS)


def _side_of(fraction: float, height: int, width: int, norm: str) -> int:
    """The square covering `fraction` of an H x W image; L2's at least 3 and odd."""
    side = int(round(math.sqrt(fraction * height * width)))
    if norm == "l2":
        side = max(side, 3)
        side += 1 - side % 2
    return min(max(side, 1), height, width)


def _first_step_past(point: int, queries: int, rescale: bool) -> int:
    """The first iteration whose (rescaled) index exceeds `point` (float rounding as the official)."""
    if not rescale:
        return point + 1
    step = max(math.ceil((point + 1) * queries / SCHEDULE_LENGTH) - 1, 0)
    while int(step / queries * SCHEDULE_LENGTH) <= point:
        step += 1
    return step


def window_side(iteration: jax.Array, p_init: float, queries: int, height: int, width: int,
                norm: str, rescale: bool = True) -> jax.Array:
    """The window side (int32) of step `iteration` (traced, 0-based): `fraction_changed`'s p(i)
    made a side, read from tables built at trace time, so no float rounding differs."""
    starts = jnp.asarray([_first_step_past(point, queries, rescale) for point in HALVING_POINTS])
    sides = jnp.asarray([_side_of(p_init / 2**k, height, width, norm)
                         for k in range(len(HALVING_POINTS) + 1)], jnp.int32)
    return sides[jnp.sum(iteration >= starts)]


def rectangle_pattern(rows: jax.Array, cols: jax.Array, height, width, max_side: int) -> jax.Array:
    """The official `eta_rectangles(height, width)` before normalization, at local coordinates
    (rows, cols) (broadcastable ints; 0 outside the rectangle). Its nested rectangles sum, at
    Chebyshev distance d from the center cell (height // 2, width // 2), to sum_{k=d}^{M-1}
    1/(k+1)^2, M = max(height // 2, width // 2) + 1. Sizes may be traced, up to the static
    `max_side`."""
    distance = jnp.maximum(jnp.abs(rows - height // 2), jnp.abs(cols - width // 2))
    rings = jnp.maximum(height // 2, width // 2) + 1
    k = np.arange(max_side // 2 + 1)
    weights = jnp.asarray(1.0 / (k + 1.0) ** 2, jnp.float32)
    covering = (k >= distance[..., None]) & (k < rings)
    value = jnp.sum(jnp.where(covering, weights, 0.0), -1)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    return jnp.where(inside, value, 0.0)


def _unit(v: jax.Array) -> jax.Array:
    return v / (jnp.sqrt(jnp.sum(v**2)) + _TINY)


def square_pattern(rows: jax.Array, cols: jax.Array, side, max_side: int) -> jax.Array:
    """The official `eta(side)` (untransposed) at local coordinates (rows, cols), which must cover
    the whole side x side square: its top side // 2 rows a positive pseudo-gaussian rectangle,
    the rest a negative one, each of L2 norm 1 / sqrt(2); 0 outside the square."""
    top_height = side // 2
    top = rectangle_pattern(rows, cols, top_height, side, max_side)
    bottom = rectangle_pattern(rows - top_height, cols, side - top_height, side, max_side)
    return _unit(_unit(top) - _unit(bottom))


def _channel_norm(v: jax.Array) -> jax.Array:
    """Each channel's L2 norm over the image, (H, W, C) -> (1, 1, C)."""
    return jnp.sqrt(jnp.sum(v**2, axis=(0, 1), keepdims=True))


def _random_window(key: jax.Array, height: int, width: int, side: jax.Array):
    """Local coordinates (H, 1), (1, W) of a side x side window placed uniformly in the image,
    and its mask (H, W, 1)."""
    row_key, col_key = jax.random.split(key)
    rows = jnp.arange(height)[:, None] - jax.random.randint(row_key, (), 0, height - side + 1)
    cols = jnp.arange(width)[None, :] - jax.random.randint(col_key, (), 0, width - side + 1)
    inside = (rows >= 0) & (rows < side) & (cols >= 0) & (cols < side)
    return rows, cols, inside[..., None]


@dataclasses.dataclass(frozen=True)
class Square:
    """The Square attack, score-based (logits only); AutoAttack runs it with 5000 queries."""

    epsilon: float = 0.3  # largest per-pixel change (linf) or the perturbation's L2 norm (l2)
    norm: str = "linf"  # linf | l2
    queries: int = 5000  # forward passes per example, the one at x and the start included
    p_init: float = 0.8  # fraction of the pixels the first steps' windows cover
    # halving points rescaled to `queries` (the paper's Square); AutoAttack's reference code runs
    # it at the 10000-query points unrescaled, and so does AutoAttack here
    rescale_schedule: bool = True

    def __post_init__(self):
        check_norm(self.norm)
        if self.queries < 2:
            raise ValueError(f"queries must be at least 2 (x and the start), got {self.queries}")

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn: LogitsFn, x, label, target, key):
        """x (H, W, C) -> (x_adv, {"queries": forward passes used, "evals": 0}); target -1 =
        untargeted. x_adv is x itself if x is already adversarial (1 query)."""
        def loss(image):
            return margin(logits_fn(image), label, target)

        start_key, search_key = jax.random.split(key)
        start = self._start(x, start_key)
        clean_margin = loss(x)
        done_at_x = clean_margin < 0
        state = (jnp.where(done_at_x, x, start), jnp.where(done_at_x, clean_margin, loss(start)),
                 jnp.where(done_at_x, jnp.int32(1), jnp.int32(2)))

        def searching(state):
            _, best_margin, used = state
            return (best_margin >= 0) & (used < self.queries)

        def step(state):
            best, best_margin, used = state
            iteration = used - 2
            step_key = jax.random.fold_in(search_key, iteration)
            candidate = self._candidate(x, best, iteration, step_key)
            candidate_margin = loss(candidate)
            better = candidate_margin < best_margin
            return (jnp.where(better, candidate, best), jnp.minimum(candidate_margin, best_margin),
                    used + 1)

        best, _, used = jax.lax.while_loop(searching, step, state)
        return best, {"queries": used, "evals": jnp.int32(0)}

    def _start(self, x: jax.Array, key: jax.Array) -> jax.Array:
        height, width, channels = x.shape
        if self.norm == "linf":
            stripes = jax.random.rademacher(key, (1, width, channels), x.dtype)
            return jnp.clip(x + self.epsilon * stripes, 0.0, 1.0)
        return jnp.clip(x + self.epsilon * _unit(_grid_of_squares(key, x.shape)), 0.0, 1.0)

    def _candidate(self, x, best, iteration, key) -> jax.Array:
        """Step `iteration`'s change of `best` (H, W, C), inside the ball and the box."""
        height, width, channels = x.shape
        side = window_side(iteration, self.p_init, self.queries, height, width, self.norm, self.rescale_schedule)
        window_key, sign_key, second_key, turn_key = jax.random.split(key, 4)
        rows, cols, window = _random_window(window_key, height, width, side)
        signs = jax.random.rademacher(sign_key, (channels,), x.dtype)
        if self.norm == "linf":
            return jnp.where(window, jnp.clip(x + self.epsilon * signs, 0.0, 1.0), best)
        _, _, second = _random_window(second_key, height, width, side)
        turned = jax.random.bernoulli(turn_key)
        pattern = square_pattern(jnp.where(turned, cols, rows), jnp.where(turned, rows, cols), side,
                                 max(height, width))
        return self._l2_move(x, best - x, window, second, pattern[..., None] * signs)

    def _l2_move(self, x, delta, window, second, pattern) -> jax.Array:
        """Zeroes `second`, puts the new pattern plus the old direction in `window`, carrying the
        mass both held and what clipping left of the budget; then rescales to epsilon."""
        old_direction = jnp.where(window, delta, 0.0)
        old_direction = old_direction / (_channel_norm(old_direction) + _TINY)
        spare = jnp.maximum(self.epsilon**2 - jnp.sum(delta**2), 0.0) / delta.shape[-1]
        freed = _channel_norm(jnp.where(window | second, delta, 0.0))
        moved = pattern + old_direction
        moved = moved / (_channel_norm(moved) + _TINY) * jnp.sqrt(spare + freed**2)
        delta = jnp.where(window, moved, jnp.where(second, 0.0, delta))
        return jnp.clip(x + self.epsilon * _unit(delta), 0.0, 1.0)


def _grid_of_squares(key: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
    """The L2 start's direction (H, W, C): a centered GRID_CELLS x GRID_CELLS grid of
    `square_pattern` squares of side min(H, W) // GRID_CELLS, each transposed or not and signed
    per channel at random."""
    height, width, channels = shape
    side = min(height, width) // GRID_CELLS
    turn_key, sign_key = jax.random.split(key)
    turned = jax.random.bernoulli(turn_key, shape=(GRID_CELLS**2,))
    signs = jax.random.rademacher(sign_key, (GRID_CELLS**2, channels), jnp.float32)
    # Static: each pixel's cell (0 outside the grid, masked) and its coordinates in the cell.
    rows = np.arange(height)[:, None] - (height - GRID_CELLS * side) // 2
    cols = np.arange(width)[None, :] - (width - GRID_CELLS * side) // 2
    in_grid = (rows >= 0) & (rows < GRID_CELLS * side) & (cols >= 0) & (cols < GRID_CELLS * side)
    cell = np.where(in_grid, (rows // side) * GRID_CELLS + cols // side, 0)
    local = np.arange(side)
    upright = square_pattern(local[:, None], local[None, :], side, side)
    local_rows, local_cols = rows % side, cols % side
    pattern = jnp.where(turned[cell], upright.T[local_rows, local_cols],
                        upright[local_rows, local_cols])
    return jnp.where(in_grid[..., None], pattern[..., None] * signs[cell], 0.0)
