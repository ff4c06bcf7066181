"""Feature-level (ILA, FIA, NAA), model-related (LinBP, SGM, Ghost) and ensemble-strategy (SVRE,
CWA, AdaEA) attacks on tiny 36-8-5 ReLU nets (SGM: with a residual layer) and 36-5 linear
members (6x6 images): what each
reduces to, one step of each against its paper's formula in numpy (float64), invariants, keys,
evaluation counts and the one-line refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adv_jax.attacks import MIFGSM, MomentumIterative, attack_batch, layered, make_attack
from adv_jax.attacks.ensemble_source import ensemble_of
from adv_jax.attacks.generate import generate
from adv_jax.models import Model, logits_fn
from adv_jax.models.layers import Layer

SHAPE, HIDDEN, CLASSES, N = (6, 6, 1), 8, 5, 4


def relu_net(seed, activation="relu", positive=False):
    """A 36-8-5 net as (Model, params); `positive`: weights and biases > 0, so every ReLU is on."""
    model = Model((Layer("dense", HIDDEN, activation=activation), Layer("dense", CLASSES)), SHAPE)
    params = jax.tree_util.tree_map(lambda w: 3.0 * w, model.init(jax.random.key(seed)))
    if positive:
        params = jax.tree_util.tree_map(lambda w: jnp.abs(w) + 0.1, params)
    else:  # biases that switch some ReLUs off
        params = ({**params[0], "b": jnp.linspace(-1.0, 1.0, HIDDEN)}, params[1])
    return model, params


def linear_member(seed):
    """A batched 36-5 linear logits_fn and its (W (36, 5), b (5,))."""
    w = 2.0 * jax.random.normal(jax.random.key(seed), (36, CLASSES))
    b = 0.1 * jax.random.normal(jax.random.key(seed + 100), (CLASSES,))
    return jax.tree_util.Partial(lambda w, b, x: x.reshape(len(x), -1) @ w + b, w, b), (w, b)


MODEL, PARAMS = relu_net(0)
NET = layered(MODEL, PARAMS)
X = jax.random.uniform(jax.random.key(1), (N, *SHAPE), minval=0.2, maxval=0.8)
LABELS = jnp.argmax(NET(X), -1).astype(jnp.int32)
UNTARGETED = jnp.full(N, -1, jnp.int32)
TARGETED = ((LABELS + 2) % CLASSES).astype(jnp.int32)
(M0, P0), (M1, P1) = linear_member(3), linear_member(4)
PAIR = ensemble_of([M0, M1])
BUDGET = {"linf": 0.1, "l2": 1.0}


def run(attack, fn=NET, target=UNTARGETED, key=0, x=X):
    return np.asarray(attack_batch(attack, fn, x, LABELS, target, key=jax.random.key(key),
                                   chunk_size=N, progress=False)[0])


def example_key(key, i):
    """The key attack_batch gives example i."""
    return jax.random.fold_in(jax.random.key(key), i)


# ---- numpy references (float64): the papers' formulas on the tiny nets ----

def np64(a):
    return np.asarray(a, np.float64)


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def objective_logit_gradient(z, label, target):
    """dJ/dz: J = CE(z, label) untargeted, -CE(z, target) targeted."""
    if target >= 0:
        return -(softmax(z) - np.eye(len(z))[target])
    return softmax(z) - np.eye(len(z))[label]


def net_parts(x, params=PARAMS, mask=1.0):
    w1, b1, w2, b2 = np64(params[0]["w"]), np64(params[0]["b"]), np64(params[1]["w"]), np64(params[1]["b"])
    z1 = np64(x).ravel() @ w1 + b1
    h = np.maximum(z1, 0) * mask
    return w1, w2, z1, h, h @ w2 + b2


def step(x, x_adv, g, epsilon, relative, momentum_velocity=None):
    """One L2 MI/I-FGSM step from x_adv along g (velocity g / |g|_1), projected."""
    v = g / np.abs(g).sum() if momentum_velocity is None else momentum_velocity
    moved = x_adv.ravel() + relative * epsilon * v / np.linalg.norm(v)
    return project(x, moved, epsilon)


def project(x, moved, epsilon):
    delta = moved - x.ravel()
    delta *= min(1.0, epsilon / np.linalg.norm(delta))
    return np.clip(x.ravel() + delta, 0, 1)


def class_sign(i, target):
    return (int(target[i]), -1.0) if target[i] >= 0 else (int(LABELS[i]), 1.0)


def prob_gradient_hidden(image, cls):
    """d softmax(z)[cls] / d h for the net's hidden layer h at an image."""
    _, w2, _, _, z = net_parts(image)
    p = softmax(z)
    return w2 @ (p[cls] * (np.eye(CLASSES)[cls] - p))


# ---- what each reduces to ----

@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_ila_with_zero_steps_is_its_base_attack(norm):
    for base_momentum, target in ((0.0, UNTARGETED), (1.0, TARGETED)):
        ila = make_attack("ila", {"steps": 0, "base_steps": 3, "norm": norm, "epsilon": BUDGET[norm],
                                  "base_momentum": base_momentum})
        np.testing.assert_array_equal(run(ila, target=target), run(ila.base, target=target))
        assert not np.array_equal(run(ila, target=target), np.asarray(X))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_an_ensemble_of_one_model_is_mi_fgsm(norm):
    """AdaEA with one member: weight 1, filter 1, exactly MI-FGSM. SVRE with one member and one
    inner step: MI-FGSM, its gradient g / |g|_1 normalized once more (same signs: linf equal
    bit for bit, l2 to rounding). CWA keeps its step back and inner step: not MI-FGSM."""
    mi = MIFGSM(epsilon=BUDGET[norm], norm=norm, steps=4)
    one = ensemble_of([M0])
    adaea = make_attack("adaea", {"epsilon": BUDGET[norm], "norm": norm, "steps": 4})
    svre = make_attack("svre", {"epsilon": BUDGET[norm], "norm": norm, "steps": 4,
                                "inner_steps_per_member": 1})
    for target in (UNTARGETED, TARGETED):
        want = run(mi, M0, target)
        np.testing.assert_array_equal(run(adaea, one, target), want)
        np.testing.assert_array_equal(run(adaea, M0, target), want)  # a bare model: one member
        if norm == "linf":
            np.testing.assert_array_equal(run(svre, one, target), want)
        else:
            np.testing.assert_allclose(run(svre, one, target), want, atol=1e-6)
    cwa = make_attack("cwa", {"epsilon": BUDGET[norm], "norm": norm, "steps": 4})
    assert not np.allclose(run(cwa, one), run(mi, M0), atol=1e-3)


def test_linbp_with_every_relu_on_is_the_plain_gradient_attack():
    model, params = relu_net(2, positive=True)
    net = layered(model, params)
    assert bool(jnp.all(model.apply(params, X, stop=1) > 0))
    plain = MomentumIterative(epsilon=0.1, steps=5, relative_step_size=0.1, momentum=0.0)
    linbp = make_attack("linbp", {"steps": 5, "relative_step_size": 0.1, "layer": 0})
    for target in (UNTARGETED, TARGETED):
        np.testing.assert_array_equal(run(linbp, net, target), run(plain, net, target))
    # with ReLUs switched off (NET's biases) the linear backward pass is another gradient
    assert not np.array_equal(run(linbp, NET), run(plain, NET))


# ---- one step of each against its formula (L2 steps: no sign discontinuity) ----

@pytest.mark.parametrize("target", [UNTARGETED, TARGETED], ids=["untargeted", "targeted"])
def test_one_step_of_each_feature_attack_is_its_formula(target):
    eps, rel = 1.0, 0.3
    common = {"epsilon": eps, "norm": "l2", "steps": 1, "relative_step_size": rel}
    ila = run(make_attack("ila", {**common, "base_steps": 1}), target=target)
    fia = run(make_attack("fia", {**common, "ensemble_size": 3, "drop_probability": 0.3}),
              target=target, key=5)
    naa = run(make_attack("naa", {**common, "integration_steps": 4, "gamma": 0.5}), target=target)
    for i in range(N):
        x, (cls, sign) = np64(X[i]), class_sign(i, target)
        w1, w2, z1, h, z = net_parts(x)
        g = w1 @ ((z1 > 0) * (w2 @ objective_logit_gradient(z, int(LABELS[i]), int(target[i]))))
        x_base = step(x, x, g, eps, rel)
        w1, _, zb, hb, _ = net_parts(x_base)
        guide = hb - h
        g_ila = w1 @ ((zb > 0) * guide / (guide @ guide))  # d <h(x') - h(x), d> / |d|^2 / dx'
        np.testing.assert_allclose(ila[i].ravel(), step(x, x_base, g_ila, eps, rel), atol=1e-5)

        mask_key = jax.random.split(example_key(5, i))[0]
        keep = np64(jax.random.bernoulli(mask_key, 0.7, (3, *SHAPE)))
        d = sum(prob_gradient_hidden(x * m, cls) for m in keep)  # at each pixel-dropped copy
        d = d / np.linalg.norm(d)
        np.testing.assert_allclose(fia[i].ravel(), step(x, x, -sign * w1 @ ((z1 > 0) * d), eps, rel),
                                   atol=1e-5)

        weights = sum(prob_gradient_hidden(x * m / 4, cls) for m in range(1, 5)) / 4
        a = (h - np.maximum(np64(PARAMS[0]["b"]), 0)) * weights  # baseline: the black image
        g_naa = -sign * w1 @ ((z1 > 0) * weights * np.where(a > 0, 1.0, 0.5))
        np.testing.assert_allclose(naa[i].ravel(), step(x, x, g_naa, eps, rel), atol=1e-5)


@pytest.mark.parametrize("target", [UNTARGETED, TARGETED], ids=["untargeted", "targeted"])
def test_one_step_of_linbp_and_ghost_is_its_formula(target):
    eps, rel, keep_p = 1.0, 0.3, 0.5
    common = {"epsilon": eps, "norm": "l2", "steps": 1, "relative_step_size": rel}
    linbp = run(make_attack("linbp", {**common, "layer": 0}), target=target)
    ghost = run(make_attack("ghost", {**common, "keep_probability": keep_p}), target=target, key=7)
    for i in range(N):
        x = np64(X[i])
        w1, w2, z1, _, z = net_parts(x)
        dz = objective_logit_gradient(z, int(LABELS[i]), int(target[i]))
        np.testing.assert_allclose(linbp[i].ravel(), step(x, x, w1 @ (w2 @ dz), eps, rel), atol=1e-5)
        # step 0's key, layer 0's mask: fold_in(fold_in(example key, t), layer index)
        layer_key = jax.random.fold_in(jax.random.fold_in(example_key(7, i), 0), 0)
        mask = np64(jax.random.bernoulli(layer_key, keep_p, (1, HIDDEN)))[0] / keep_p
        w1, w2, z1, _, z = net_parts(x, mask=mask)
        dz = objective_logit_gradient(z, int(LABELS[i]), int(target[i]))
        g = w1 @ ((z1 > 0) * mask * (w2 @ dz))
        np.testing.assert_allclose(ghost[i].ravel(), step(x, x, g, eps, rel), atol=1e-5)


def member_gradient(member, x, label, target):
    w, b = np64(member[0]), np64(member[1])
    return w @ objective_logit_gradient(x.ravel() @ w + b, label, target)


def test_one_step_of_each_ensemble_strategy_is_its_formula():
    eps, rel = 1.0, 0.3
    common = {"epsilon": eps, "norm": "l2", "steps": 1, "relative_step_size": rel}
    svre = run(make_attack("svre", {**common, "inner_steps_per_member": 1}), PAIR, key=3)
    cwa = run(make_attack("cwa", {**common, "relative_reverse_step": 0.2, "relative_inner_step": 0.5}),
              PAIR)
    adaea = run(make_attack("adaea", common), PAIR, target=TARGETED)
    members = (P0, P1)
    for i in range(N):
        x, label = np64(X[i]), int(LABELS[i])
        grads = [member_gradient(m, x, label, -1) for m in members]
        mean = (grads[0] + grads[1]) / 2
        x_inner, accumulated = x.ravel(), 0.0
        for j in range(2):  # inner_steps = 1 x 2 members, member k drawn per inner step
            k = int(jax.random.randint(jax.random.fold_in(jax.random.fold_in(example_key(3, i), 0), j),
                                       (), 0, 2))
            u = member_gradient(members[k], x_inner, label, -1) - (grads[k] - mean)
            accumulated = accumulated + u / np.abs(u).sum()
            x_inner = step(x, x_inner, None, eps, rel, momentum_velocity=accumulated)
        np.testing.assert_allclose(svre[i].ravel(), step(x, x, accumulated, eps, rel), atol=1e-5)

        x_inner = project(x, x.ravel() - 0.2 * eps * mean / np.linalg.norm(mean), eps)
        inner = 0.0
        for m in members:
            g = member_gradient(m, x_inner, label, -1)
            inner = inner + g / np.linalg.norm(g)
            x_inner = project(x, x_inner + 0.5 * eps * inner, eps)
        np.testing.assert_allclose(cwa[i].ravel(), step(x, x, x_inner - x.ravel(), eps, rel), atol=1e-5)

        target = int(TARGETED[i])
        grads = [member_gradient(m, x, label, target) for m in members]
        trials = [step(x, x, g, eps, rel) for g in grads]
        ce = np.array([[-np.log(softmax(t @ np64(m[0]) + np64(m[1]))[target]) for t in trials]
                       for m in members])  # ce[i, j]: member i at member j's trial
        scores = 10.0 * np.array([ce[1, 1] / ce[1, 0], ce[0, 0] / ce[0, 1]])  # targeted: inverse
        a = softmax(scores)
        z = sum(a_m * (x.ravel() @ np64(m[0]) + np64(m[1])) for a_m, m in zip(a, members))
        g = sum(a_m * np64(m[0]) @ objective_logit_gradient(z, label, target) for a_m, m in zip(a, members))
        agree = np.sign(grads[0]) * np.sign(grads[1]) >= -0.3  # one channel: cosine = sign product
        np.testing.assert_allclose(adaea[i].ravel(), step(x, x, g * agree, eps, rel), atol=1e-5)


def residual_net(seed):
    """36-8 ReLU, a residual layer h + tanh(W h + b), 8-5: (Model, params)."""
    block = Layer("residual", branch=(Layer("dense", HIDDEN, activation="tanh"),))
    model = Model((Layer("dense", HIDDEN, activation="relu"), block, Layer("dense", CLASSES)), SHAPE)
    params = jax.tree_util.tree_map(lambda w: 3.0 * w, model.init(jax.random.key(seed)))
    return model, ({**params[0], "b": jnp.linspace(-1.0, 1.0, HIDDEN)}, *params[1:])


RESNET = layered(*residual_net(5))


@pytest.mark.parametrize("target", [UNTARGETED, TARGETED], ids=["untargeted", "targeted"])
def test_one_step_of_sgm_is_its_formula(target):
    """Through r = h + tanh(W h + b) the backward pass is dh = dr + gamma W (1 - t^2) dr; with
    gamma 1 SGM is MI-FGSM."""
    eps, rel, gamma = 1.0, 0.3, 0.2
    sgm = run(make_attack("sgm", {"epsilon": eps, "norm": "l2", "steps": 1, "relative_step_size": rel,
                                  "gamma": gamma}), RESNET, target)
    (p1, block, p2) = RESNET.params
    w1, b1, wr, br = np64(p1["w"]), np64(p1["b"]), np64(block["branch"][0]["w"]), np64(block["branch"][0]["b"])
    w2, b2 = np64(p2["w"]), np64(p2["b"])
    for i in range(N):
        x = np64(X[i])
        z1 = x.ravel() @ w1 + b1
        h = np.maximum(z1, 0)
        t = np.tanh(h @ wr + br)
        dr = w2 @ objective_logit_gradient((h + t) @ w2 + b2, int(LABELS[i]), int(target[i]))
        dh = dr + gamma * wr @ ((1 - t ** 2) * dr)  # skip: 1; branch: gamma
        np.testing.assert_allclose(sgm[i].ravel(), step(x, x, w1 @ ((z1 > 0) * dh), eps, rel), atol=1e-5)
    plain = MIFGSM(epsilon=0.1, steps=3)
    np.testing.assert_allclose(run(make_attack("sgm", {"gamma": 1.0, "steps": 3}), RESNET, target),
                               run(plain, RESNET, target), atol=1e-6)


# ---- invariants, keys, evaluations ----

RUNNABLE = {"ila": NET, "fia": NET, "naa": NET, "linbp": NET, "ghost": NET, "sgm": RESNET,
            "svre": PAIR, "cwa": PAIR, "adaea": PAIR}
SMALL = {"ila": {"steps": 2, "base_steps": 2}, "fia": {"ensemble_size": 3}, "naa": {"integration_steps": 3},
         "linbp": {"steps": 3, "layer": 0}, "ghost": {"keep_probability": 0.7}, "svre": {"inner_steps_per_member": 1},
         "cwa": {}, "adaea": {}, "sgm": {}}
EVALS = {"ila": 4, "fia": 3 + 3, "naa": 3 + 3, "linbp": 3, "ghost": 3, "svre": 3 * 2 * 2,
         "cwa": 3 * 2 * 2, "adaea": 3 * 2 * 2, "sgm": 3}


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_inside_the_box_and_the_ball_same_key_same_output(name, norm):
    attack = make_attack(name, {"steps": 3, "epsilon": BUDGET[norm], "norm": norm, **SMALL[name]})
    fn = RUNNABLE[name]
    for target in (UNTARGETED, TARGETED):
        x_adv = run(attack, fn, target, key=11)
        delta = (x_adv - np.asarray(X)).reshape(N, -1)
        size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
        assert x_adv.min() >= 0 and x_adv.max() <= 1 and np.all(size <= BUDGET[norm] + 1e-5), name
        assert np.all(size > 0), name
        np.testing.assert_array_equal(run(attack, fn, target, key=11), x_adv)
    made = generate(attack, fn, X, LABELS, key=jax.random.key(0), progress=False)
    np.testing.assert_array_equal(made.diagnostics["evals"], EVALS[name])


def test_random_attacks_depend_on_the_key():
    for name in ("fia", "ghost", "svre"):
        attack = make_attack(name, {"steps": 3, **SMALL[name]})
        assert not np.array_equal(run(attack, RUNNABLE[name], key=1), run(attack, RUNNABLE[name], key=2)), name


# ---- refusals: one ValueError line ----

def refusal(attack, fn):
    with pytest.raises(ValueError) as error:
        run(attack, fn)
    message = str(error.value)
    assert "\n" not in message.strip(), message
    return message


def test_refusals_are_one_line_with_the_reason():
    bare = logits_fn(MODEL, PARAMS)
    for name in ("ila", "fia", "naa", "linbp", "ghost", "sgm"):
        assert "needs the split model" in refusal(make_attack(name), bare), name
    sigmoid = layered(*relu_net(0, activation="sigmoid"))
    assert "no ReLU" in refusal(make_attack("linbp"), sigmoid)
    assert "skip connections" in refusal(make_attack("sgm"), NET)
    assert "not a hidden layer" in refusal(make_attack("fia", {"layer": 2}), NET)
