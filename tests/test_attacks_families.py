"""The transfer families (transfer_families.py, input_copies.py): each reduces exactly to the
attack its paper builds on when its ingredient is off, each one's first update(s) on a linear
model equal its paper's formula computed in float64 numpy, SIA's and BSR's copies are the
transforms they claim, and every preset stays in the box and the ball, targeted or not, with
its output a function of the key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from adv_jax.attacks import MIFGSM, input_copies, attack_batch, make_attack
from adv_jax.attacks.budgets import perturbation_norm
from adv_jax.attacks.input_copies import (ImagePool, admix_copies, dct_lowpass_operator, resize_operator,
                                          shuffle_rotate, structure_invariant)
from adv_jax.attacks.transfer_families import TransferFamily, ball_samples, ingredient_key

N = 4
W = np.asarray(jax.random.normal(jax.random.key(0), (784, 10)), np.float64) * 0.05
B = np.linspace(-0.2, 0.2, 10)
FN = jax.tree_util.Partial(lambda w, b, x: x.reshape(len(x), -1) @ w + b,
                           jnp.asarray(W, jnp.float32), jnp.asarray(B, jnp.float32))
IMAGES = jax.random.uniform(jax.random.key(1), (N, 28, 28, 1))
LABELS = jnp.argmax(FN(IMAGES), -1).astype(jnp.int32)
UNTARGETED, TARGETED = jnp.full(N, -1, jnp.int32), (LABELS + 3) % 10
BUDGET = {"linf": 0.1, "l2": 2.0}
KEY = jax.random.key(7)
# A pool with one image of another class than example 0's: Admix's draws are then known.
POOL = ImagePool(np.stack([np.full((28, 28, 1), 0.3), np.asarray(IMAGES[1]), np.full((28, 28, 1), 0.9)]),
                 np.asarray([int(LABELS[0]), (int(LABELS[0]) + 1) % 10, int(LABELS[0])]))


def run(attack, target=UNTARGETED, key=0):
    return np.asarray(attack_batch(attack, FN, IMAGES, LABELS, target, key=jax.random.key(key),
                                   chunk_size=N, progress=False)[0])


def family(name, norm, **params):
    params = {"epsilon": BUDGET[norm], "norm": norm, "steps": 3, **params}
    if name == "admix":
        params.setdefault("admix_pool", POOL)
    return make_attack(name, params)


# The reductions the papers state: each ingredient off gives the attack it is built on, bit for bit.
REDUCTIONS = [
    ("ni_fgsm", {"lookahead": 0.0}, "mi"),  # NI without look-ahead
    ("emi_fgsm", {"enhanced_samples": 1, "enhanced_radius": 0.0}, "mi"),  # EMI: one point, at x_t
    ("vmi_fgsm", {"variance_samples": 0}, "mi"),  # VMI without neighbours: no variance term
    ("vni_fgsm", {"variance_samples": 0}, "ni"),
    ("pgn", {"penalty_samples": 1, "penalty_radius": 0.0, "penalty_balance": 0.0}, "mi"),  # g(x_t) only
    ("gra", {"relevance_samples": 0, "relevance_decay": 1.0}, "mi"),  # no relevance, no decay
    ("sini_fgsm", {"scales": 1}, "ni"),  # one scale: x / 2^0
    ("admix", {"mix_strength": 0.0, "mixes": 1, "lookahead": 1.0}, "sini"),  # x + 0 x', NI on: SI-NI
]


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name, off, base", REDUCTIONS, ids=[r[0] for r in REDUCTIONS])
def test_each_family_with_its_ingredient_off_is_the_attack_it_builds_on(name, off, base, norm):
    reference = {"mi": MIFGSM(epsilon=BUDGET[norm], norm=norm, steps=3),
                 "ni": family("ni_fgsm", norm), "sini": family("sini_fgsm", norm)}[base]
    reduced = family(name, norm, **off)
    for target in (UNTARGETED, TARGETED):
        if (name, norm) == ("admix", "l2"):  # the l2 path compiles its float32 sums differently
            np.testing.assert_allclose(run(reduced, target), run(reference, target), atol=3e-7)
        else:
            np.testing.assert_array_equal(run(reduced, target), run(reference, target))
    # On, the ingredient changes the attack (GRA on a linear model only slightly: the neighbours'
    # gradients are nearly the gradient, their cosine nearly 1).
    assert np.abs(run(family(name, norm)) - run(reference)).max() > 1e-6


# float64 numpy: the linear model's objective gradient and the MI loop of the module docstring.
def grad_j(p, label, target):
    z = p.reshape(-1) @ W + B
    soft = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    cls = target if target >= 0 else label
    onehot = np.eye(10)[cls]
    sign = -1.0 if target >= 0 else 1.0  # targeted: descend CE on the target
    return (sign * W @ (soft - onehot)).reshape(p.shape)


def units(v, norm):
    return v * ((v.size if norm == "linf" else v.size ** 0.5) / (np.abs(v).sum() + 1e-12))


def project(x_new, x, eps, norm):
    delta = x_new - x
    if norm == "linf":
        delta = np.clip(delta, -eps, eps)
    else:
        delta = delta * min(1.0, eps / (np.linalg.norm(delta) + 1e-12))
    return np.clip(x + delta, 0.0, 1.0)


def reference_loop(update, steps, norm, lookahead=0.0, decay=1.0, x=None):
    """MI-FGSM (mu = 1) on example 0 with the iteration gradient update(t, x_t, p, state)."""
    x = np.asarray(IMAGES[0], np.float64) if x is None else x
    eps = BUDGET[norm]
    alpha, x_t, velocity, gain, state = 0.1 * eps, x.copy(), np.zeros_like(x), np.full_like(x, 1 / decay), {}
    for t in range(steps):
        p = x_t + lookahead * alpha * units(velocity, norm)
        total = update(t, x_t, p, state)
        new = velocity + total / np.abs(total).sum()
        gain = gain * np.where(np.sign(new) == np.sign(velocity), 1.0, decay)
        direction = np.sign(new) if norm == "linf" else new / np.linalg.norm(new)
        x_t, velocity = project(x_t + alpha * gain * direction, x, eps, norm), new
    return x_t


def samples(t, ingredient, count, radius, norm):
    return np.asarray(ball_samples(ingredient_key(KEY, t, ingredient), (28, 28, 1), count, radius, norm),
                      np.float64)


def hand_updates(label, target, norm):
    """Each family's iteration gradient by its paper's formula (module docstring of
    transfer_families.py), its attack's parameters, look-ahead and decay."""
    eps, g = BUDGET[norm], lambda p: grad_j(p, label, target)  # noqa: E731
    alpha = 0.1 * eps

    def vmi(t, x_t, p, state):  # g_hat + v_t; v_{t+1} = neighbours' mean around x_t - g_hat
        total = g(p) + state.get("v", 0.0)
        state["v"] = np.mean([g(x_t + r) for r in samples(t, "variance", 3, 1.5 * eps, norm)], 0) - g(p)
        return total

    def emi(t, x_t, p, state):  # points along the previous averaged gradient
        previous = state.get("bar", np.zeros_like(p))
        points = [p + c * alpha * units(previous, norm) for c in np.linspace(-7, 7, 3)]
        state["bar"] = np.mean([g(q) for q in points], 0)
        return state["bar"]

    def gra(t, x_t, p, state):  # cosine-weighted mix with the neighbours' mean
        mean = np.mean([g(p + r) for r in samples(t, "relevance", 3, 3.5 * eps, norm)], 0)
        cosine = (g(p) * mean).sum() / (np.linalg.norm(g(p)) * np.linalg.norm(mean))
        return cosine * g(p) + (1 - cosine) * mean

    def pgn(t, x_t, p, state):  # (1 - delta) g(x') + delta g(x' - alpha u(g(x'))), x' near p
        def one(q):
            return 0.5 * g(q) + 0.5 * g(q - alpha * units(g(q), norm))
        return np.mean([one(p + r) for r in samples(t, "base", 2, 3.0 * eps, norm)], 0)

    def scaled(added):  # mean over i, x' of d/dp J((p + x') / 2^i) = 2^-i grad J((p + x') / 2^i)
        return lambda t, x_t, p, state: np.mean([2.0 ** -i * g((p + a) / 2 ** i) for a in added
                                                 for i in range(3)], 0)

    other = 0.2 * POOL.images[1].astype(np.float64)  # the pool's one image of another class
    return {"ni_fgsm": ({}, lambda t, x_t, p, state: g(p), 1.0, 1.0),
            "vmi_fgsm": ({"variance_samples": 3}, vmi, 0.0, 1.0),
            "vni_fgsm": ({"variance_samples": 3}, vmi, 1.0, 1.0),
            "emi_fgsm": ({"enhanced_samples": 3}, emi, 0.0, 1.0),
            "gra": ({"relevance_samples": 3}, gra, 0.0, 0.94),
            "pgn": ({"penalty_samples": 2}, pgn, 0.0, 1.0),
            "sini_fgsm": ({"scales": 3}, scaled([0.0]), 1.0, 1.0),
            "admix": ({"scales": 3, "mixes": 2}, scaled([other, other]), 0.0, 1.0)}


@pytest.mark.parametrize("norm, targeted", [("linf", False), ("l2", True)])
@pytest.mark.parametrize("name", ["ni_fgsm", "vmi_fgsm", "vni_fgsm", "emi_fgsm", "gra", "pgn",
                                  "sini_fgsm", "admix"])
def test_two_updates_on_a_linear_model_are_the_papers_formula(name, norm, targeted):
    label = int(LABELS[0])
    target = (label + 3) % 10 if targeted else -1
    params, update, lookahead, decay = hand_updates(label, target, norm)[name]
    attack = family(name, norm, steps=2, **params)
    one = lambda x: FN(x[None])[0]  # noqa: E731
    got = attack(one, IMAGES[0], LABELS[0], jnp.int32(target), KEY)
    np.testing.assert_allclose(got, reference_loop(update, 2, norm, lookahead, decay), atol=1e-5)


@pytest.mark.parametrize("name", ["sia", "bsr"])
def test_sia_and_bsr_step_along_the_gradient_averaged_over_their_copies(name):
    """One step: G = mean_k (d copy_k / dx)^T grad J(copy_k(x)), the copies drawn from the
    attack's key (the transforms themselves are checked below)."""
    copy = {"sia": lambda p, k: structure_invariant(p, k, 3),
            "bsr": lambda p, k: shuffle_rotate(p, k, 2, 24.0)}[name]
    label, total = int(LABELS[0]), 0.0
    for k in jax.random.split(ingredient_key(KEY, 0, "base"), 3):
        image, pullback = jax.vjp(lambda p, k=k: copy(p, k), IMAGES[0])
        cotangent = jnp.asarray(grad_j(np.asarray(image, np.float64), label, -1), jnp.float32)
        total = total + np.asarray(pullback(cotangent)[0], np.float64) / 3
    got = family(name, "linf", steps=1, transforms=3)(lambda x: FN(x[None])[0], IMAGES[0], LABELS[0],
                                                        jnp.int32(-1), KEY)
    np.testing.assert_allclose(got, reference_loop(lambda *_: total, 1, "linf"), atol=1e-5)


def bilinear_1d(values, out_size):
    """values (n, ...) resized to (out_size, ...) along axis 0 as torch's F.interpolate(mode="bilinear",
    align_corners=False) does per axis: source (a + 1/2) n / out_size - 1/2, floored at 0, its two
    neighbours (the last one twice at the end)."""
    n, out = len(values), []
    for a in range(out_size):
        source = max((a + 0.5) * n / out_size - 0.5, 0.0)
        low = int(source)
        high = min(low + 1, n - 1)
        out.append((1 - (source - low)) * values[low] + (source - low) * values[high])
    return np.stack(out)


def resized_block(block):
    """SIA's resize of block (h, w, C), as the authors' code: to int(0.8 h) + 1 x int(0.8 w) + 1 and back."""
    h, w = block.shape[:2]
    small = bilinear_1d(bilinear_1d(block, int(0.8 * h) + 1).swapaxes(0, 1), int(0.8 * w) + 1)
    return bilinear_1d(bilinear_1d(small, w).swapaxes(0, 1), h)


def lowpass_block(block):
    """SIA's DCT low-pass of block (h, w, C): orthonormal 2-D DCT-II, the int(0.4 n) highest frequencies
    of each axis zeroed, inverse DCT."""
    h, w = block.shape[:2]
    coefficients = scipy.fft.dctn(np.asarray(block, np.float64), axes=(0, 1), norm="ortho")
    coefficients[h - int(0.4 * h):] = 0
    coefficients[:, w - int(0.4 * w):] = 0
    return scipy.fft.idctn(coefficients, axes=(0, 1), norm="ortho")


def sia_kind(x, out):
    """Which of SIA's ten transforms of the whole image x gives out (None: none of them)."""
    factor = out.sum() / x.sum()
    kinds = {"roll rows": any(np.array_equal(out, np.roll(x, s, 0)) for s in range(28)),
             "roll columns": any(np.array_equal(out, np.roll(x, s, 1)) for s in range(28)),
             "flip rows": np.array_equal(out, x[::-1]), "flip columns": np.array_equal(out, x[:, ::-1]),
             "rotate 180": np.array_equal(out, x[::-1, ::-1]),
             "scale": 0 <= factor < 1 and np.allclose(out, factor * x, atol=1e-6),
             "resize": np.allclose(out, resized_block(x), atol=1e-5),
             "dct": np.allclose(out, lowpass_block(x), atol=1e-5),
             "noise": 0 < np.abs(out - x).max() <= 16 / 255 + 1e-6,
             "dropout": np.all(out == 0) or np.allclose(out, x / 0.9, atol=1e-6)}
    return next((kind for kind, matches in kinds.items() if matches), None)


def test_a_one_block_sia_copy_is_one_of_its_ten_transforms():
    x = np.asarray(IMAGES[0])
    kinds = [sia_kind(x, np.asarray(structure_invariant(IMAGES[0], jax.random.key(s), 1))) for s in range(40)]
    assert None not in kinds
    assert len(set(kinds)) >= 7  # the draw covers the transforms (40 draws of 10: about 9.9 kinds expected)
    assert {"resize", "dct"} <= set(kinds)  # these seeds draw both (each absent w.p. 0.9^40 = 1.5%)
    blocks = np.asarray(structure_invariant(IMAGES[0], jax.random.key(0), 3))
    assert blocks.shape == (28, 28, 1) and sia_kind(x, blocks) is None  # 9 blocks, not one transform


@pytest.mark.parametrize("size", range(1, 13))
def test_the_dct_lowpass_is_a_projection_that_keeps_constants(size):
    block = (slice(0, size), slice(0, size))
    identity = np.asarray(dct_lowpass_operator(size, size, 16))  # every frequency kept
    np.testing.assert_allclose(identity[block], np.eye(size), atol=1e-5)
    assert not identity[size:].any() and not identity[:, size:].any()  # nothing outside the block
    for kept in range(1, size):
        lowpass = np.asarray(dct_lowpass_operator(size, kept, 16), np.float64)[block]
        np.testing.assert_allclose(lowpass @ lowpass, lowpass, atol=1e-5)
        np.testing.assert_allclose(lowpass, lowpass.T, atol=1e-6)  # orthogonal projection
        np.testing.assert_allclose(lowpass @ np.ones(size), np.ones(size), atol=1e-5)
        assert np.linalg.matrix_rank(lowpass, tol=1e-4) == kept


@pytest.mark.parametrize("size", range(1, 13))
def test_the_resize_keeps_constants_and_is_the_identity_at_its_own_size(size):
    block = (slice(0, size), slice(0, size))
    np.testing.assert_allclose(np.asarray(resize_operator(size, size, 16))[block], np.eye(size), atol=1e-6)
    for resized in range(1, size):
        resize = np.asarray(resize_operator(size, resized, 16))
        np.testing.assert_allclose(resize[block] @ np.ones(size), np.ones(size), atol=1e-6)
        assert not resize[size:].any() and not resize[:, size:].any()
        expected = bilinear_1d(bilinear_1d(np.eye(size), resized), size)  # column j: sample j's image
        np.testing.assert_allclose(resize[block], expected, atol=1e-6)


SIA_CUTS = ([0, 1, 12, 28], [0, 9, 11, 28])  # rows, columns: blocks of 1, 11, 16 and 9, 2, 17 px


@pytest.mark.parametrize("ops", [np.full((3, 3), 8), np.full((3, 3), 9), [[8, 9, 3], [9, 8, 4], [8, 2, 9]]],
                         ids=["resize", "dct", "mixed"])
def test_sia_resize_and_dct_blocks_are_the_authors_transforms_of_each_block(ops, monkeypatch):
    """With the cuts and the ops forced, each block of the copy is its transform of x's block
    (numpy: torch's bilinear resize per axis, scipy's orthonormal DCT); flips fill the rest."""
    cuts = iter(SIA_CUTS)
    monkeypatch.setattr(input_copies, "_random_cuts", lambda *_: jnp.asarray(next(cuts)))
    monkeypatch.setattr(input_copies, "_draw_sia_ops", lambda *_: jnp.asarray(ops, jnp.int32))
    x = np.asarray(jax.random.uniform(jax.random.key(2), (28, 28, 2)))
    copy = np.asarray(structure_invariant(jnp.asarray(x), jax.random.key(0), 3))
    expected = np.empty_like(x, np.float64)
    transforms = {8: resized_block, 9: lowpass_block, 2: lambda b: b[::-1], 3: lambda b: b[:, ::-1],
                  4: lambda b: b[::-1, ::-1]}
    (r0, r1), (c0, c1) = (SIA_CUTS[0][:-1], SIA_CUTS[0][1:]), (SIA_CUTS[1][:-1], SIA_CUTS[1][1:])
    for a, (top, bottom) in enumerate(zip(r0, r1)):
        for b, (left, right) in enumerate(zip(c0, c1)):
            expected[top:bottom, left:right] = transforms[np.asarray(ops)[a, b]](x[top:bottom, left:right])
    np.testing.assert_allclose(copy, expected, atol=1e-5)


def test_sia_copies_are_linear_in_x_with_their_transpose_as_gradient():
    """Per key, a copy is linear in x (all ten ops but noise; noise adds a constant), so its VJP is
    its transpose: <copy(x) - copy(0), y> = <x, vjp(y)>; jit and vmap give the eager copies."""
    x, y = IMAGES[0], IMAGES[1]
    keys = jax.random.split(jax.random.key(5), 8)
    copies = jax.jit(jax.vmap(lambda k: structure_invariant(x, k, 3)))(keys)
    for key, copy in zip(keys, copies):
        eager, pullback = jax.vjp(lambda p, key=key: structure_invariant(p, key, 3), x)
        np.testing.assert_allclose(copy, eager, atol=1e-6)
        linear = np.asarray(eager, np.float64) - np.asarray(structure_invariant(jnp.zeros_like(x), key, 3))
        np.testing.assert_allclose(np.sum(linear * np.asarray(y)), np.sum(np.asarray(x) * pullback(y)[0]),
                                   rtol=1e-5)


def test_bsr_permutes_the_blocks_and_rotates_each_about_its_centre():
    x = np.asarray(IMAGES[0])
    corners = [(r, c) for r in (0, 14) for c in (0, 14)]
    for seed in range(3):  # no rotation: a permutation of the four 14x14 blocks
        out = np.asarray(shuffle_rotate(IMAGES[0], jax.random.key(seed), 2, 0.0))
        found = [next(i for i, (r, c) in enumerate(corners) if np.allclose(out[a:a + 14, b:b + 14],
                                                                           x[r:r + 14, c:c + 14], atol=1e-6))
                 for a, b in corners]
        assert sorted(found) == [0, 1, 2, 3]
    flat = np.asarray(shuffle_rotate(jnp.full((28, 28, 1), 0.5), jax.random.key(0), 2, 24.0))
    u = np.arange(14) - 6.5
    disc = np.tile(np.hypot(u[:, None], u[None, :]) <= 6.5, (2, 2))  # kept by any rotation
    np.testing.assert_allclose(flat[disc], 0.5, atol=1e-5)
    assert flat.min() == 0.0  # the corners rotated in from outside a block


def test_admix_mixes_only_images_of_other_classes_at_each_scale():
    pool = ImagePool(np.random.default_rng(0).uniform(size=(6, 28, 28, 1)), np.array([0, 1, 2, 0, 1, 2]))
    for seed in range(5):
        copies = np.asarray(admix_copies(jnp.zeros((28, 28, 1)), jax.random.key(seed), jnp.int32(1),
                                         pool, 4, 1.0, 2))
        assert copies.shape == (8, 28, 28, 1)
        for j in range(4):  # copy (j, i) = (0 + 1.0 x'_j) / 2^i
            drawn = [k for k in range(6) if np.allclose(copies[2 * j], pool.images[k])]
            assert drawn and pool.labels[drawn[0]] != 1
            np.testing.assert_allclose(copies[2 * j + 1], copies[2 * j] / 2)


def log_p(images, classes):
    """log p(class | x) of the linear model, per example (N,)."""
    log_softmax = np.asarray(jax.nn.log_softmax(FN(jnp.asarray(images))))
    return np.take_along_axis(log_softmax, np.asarray(classes)[:, None], 1)[:, 0]


SMALL = {"vmi_fgsm": {"variance_samples": 2}, "vni_fgsm": {"variance_samples": 2},
         "emi_fgsm": {"enhanced_samples": 3}, "gra": {"relevance_samples": 2},
         "pgn": {"penalty_samples": 2}, "admix": {"mixes": 2}, "sia": {"transforms": 2},
         "bsr": {"transforms": 2}}
RANDOM = {"vmi_fgsm", "vni_fgsm", "gra", "pgn", "admix", "sia", "bsr"}  # draw from the key


@pytest.mark.parametrize("name, norm", [("ni_fgsm", "linf"), ("vmi_fgsm", "l2"), ("vni_fgsm", "linf"),
                                        ("emi_fgsm", "l2"), ("gra", "linf"), ("pgn", "l2"),
                                        ("sini_fgsm", "l2"), ("admix", "linf"), ("sia", "l2"),
                                        ("bsr", "linf")])
def test_every_family_stays_in_the_box_and_the_ball_and_depends_only_on_the_key(name, norm):
    attack = family(name, norm, **SMALL.get(name, {}))
    for target in (UNTARGETED, TARGETED):
        x_adv = run(attack, target)
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        assert np.all(np.asarray(perturbation_norm(x_adv - IMAGES, norm)) <= BUDGET[norm] * (1 + 1e-5))
        np.testing.assert_array_equal(x_adv, run(attack, target))
        if target is TARGETED:  # toward the target, or away from the label
            assert np.all(log_p(x_adv, TARGETED) > log_p(IMAGES, TARGETED))
        else:
            assert np.all(log_p(x_adv, LABELS) < log_p(IMAGES, LABELS))
    assert (name in RANDOM) == (not np.array_equal(run(attack, key=0), run(attack, key=1)))


def test_the_presets_report_their_papers_gradient_evaluations():
    evals = {"ni_fgsm": 10, "vmi_fgsm": 10 * 21, "vni_fgsm": 10 * 21, "emi_fgsm": 10 * 11,
             "gra": 10 * 21, "pgn": 10 * 40, "sini_fgsm": 10 * 5, "admix": 10 * 15, "sia": 10 * 20,
             "bsr": 10 * 20}
    for name, count in evals.items():
        attack = make_attack(name, {"admix_pool": POOL} if name == "admix" else None)
        assert attack.gradient_evals == count, name  # what with_diagnostics reports (common.py)
    with pytest.raises(ValueError, match="admix_pool"):
        TransferFamily(copies="admix")


def test_a_run_with_admix_mixes_in_its_own_training_images(tiny_overrides, mnist_dir, tmp_path, monkeypatch):
    """attack=admix in a run reads its pool from the run's data (data.mnist_dir), not again from
    ADV_JAX_MNIST_DIR or the download cache (here both point nowhere)."""
    import adv_jax
    from adv_jax.attacks.input_copies import mnist_pool
    from adv_jax.config import compose

    mnist_pool.cache_clear()
    monkeypatch.setenv("ADV_JAX_MNIST_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("ADV_JAX_CACHE_DIR", str(tmp_path / "nowhere"))
    cfg = compose([*tiny_overrides, f"data.mnist_dir={mnist_dir}", "model=fc10", "attack=admix",
                   "attack.num_examples=4", "attack.params.steps=2", "lipschitz.images=4"])
    metrics = adv_jax.run(cfg, tmp_path / "run")
    assert metrics["attack/num_examples"] == 4
