"""The paper's minimum-distortion attack: box-constrained L-BFGS with a search over c.

For one image x (n = 784 pixels), a target t and a penalty weight c > 0 (section 4.1):

    minimize_z  c * ||z - x||_2^2 + loss(f(z), t)    subject to  z in [0, 1]^n

The SQUARED norm: it is smooth at z = x, where the first solve starts, so the quasi-Newton model
holds there (|r| has no gradient at r = 0, a kink quasi-Newton handles badly); the c search makes
the choice immaterial for what is reported, the smallest distortion found. As written, c weighs
the norm: larger c -> smaller r. Per example, c starts at `c_init` and is multiplied by 10 while
solves succeed (divided by 10 while they fail) until success and failure are bracketed, then set
to the geometric mean of the largest successful and the smallest failed c (bisection in log c);
after `c_steps` solves the closest success is kept. A solve that fails may have failed for want
of evaluations rather than because c is too large; so an example with no success after
`c_steps` solves starts the c search again, from x and c_init, with
`extra_evals` evaluations per solve, for at most `extra_solves` more solves, until its first
success. Only the chunks holding such an example run longer. Success = argmax f(z) == t, or != label
when untargeted (t = -1).

Inner solver (one per c): projected L-BFGS. Variables at a bound whose gradient points out of the
box are fixed; the direction is the two-loop recursion over the last `memory` pairs (s, y)
projected onto the free variables (pairs with s.y <= eps y.y are never stored); a backtracking
Armijo search along the projection arc clip(z + a d, 0, 1) with safeguarded quadratic
interpolation. A solve ends when the projected gradient's max-norm |clip(z - g, 0, 1) - z| falls
below `tolerance` times 2 c max|r| (the scale both terms' gradients share at the optimum, so the
test means the same at every c; an absolute one stops solves at small c early), after `max_evals`
evaluations, or when the line search fails (round-off). With `warm_start`, each solve after the
first starts where the previous one ended; its value and gradient at the new c follow in closed
form (no evaluation), and solves at nearby c need few iterations. Distortion saturates long before
the solves converge (on FC100, 15 evaluations per solve is within 0.1% of cold solves run to a
1e-6 tolerance, and 10 evaluations with 3 pairs within 0.3% at twice the speed), hence the defaults.

Batching: vmapped code cannot skip work per example, so the attack is ONE loop whose trips each
make exactly one function evaluation per example, and each example advances its own state
machine: its start (the first trip evaluates z = x), an L-BFGS step, a backtracking step, or the
end of its solve and the start of the next (`_trip`: evaluate, `_armijo`, `_begin`,
`_solve_ends`, `_finish_solve` and `_restart`, `_next_line`, which projects the trial onto the
box). Trips run in rounds of `TRIPS_PER_ROUND` inside a `lax.while_loop`. Rounds exist because a
while_loop with a per-example condition selects its whole carry, L-BFGS memory included, on
every trip; a fori_loop inside it does not. `with_diagnostics` (one example, vmapped by a caller)
stops once every example of the batch is done, so a batch costs its slowest example's
evaluations. `attack_rows` (what `attack_batch` calls, per device) keeps `lanes` examples in
flight instead: after each round a lane whose example is done writes its result and takes the
next row, so a lane waits at most the rest of a round; same results, example by example.

Speed on CPU: every trip reads and rewrites the memory (2 * memory * n floats per example), which
costs more than the MLP's gradient unless the lanes' state stays in cache (`lanes` = 64 per
device). On FC100, memory 5 -> 3 takes a 2000-image pass from 1.5 s to 1.0 s at the same mean
distortion (0.05311). The arithmetic it achieves against a fused forward+backward pass:
results/bench_attacks.md, section (c).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from adv_jax.attacks.common import LogitsFn, is_adversarial
from adv_jax.attacks.ensemble_source import member_averaged

__all__ = ["LOSSES", "LBFGSAttack", "TRIPS_PER_ROUND", "attack_loss"]

LOSSES = ("xent", "margin")
_ARMIJO = 1e-4  # sufficient decrease: f(z') <= f(z) + _ARMIJO * g.(z' - z)
_MAX_BACKTRACKS = 12  # a line search failing this often ends the solve
_CURVATURE_EPS = 1e-8  # keep a pair only if s.y > _CURVATURE_EPS * y.y (positive curvature)
TRIPS_PER_ROUND = 8  # trips per while_loop round: a loop runs a multiple of this many
_TINY = 1e-30


def attack_loss(logits: jax.Array, label: jax.Array, target: jax.Array, kind: str = "xent",
                confidence: float = 0.0) -> jax.Array:
    """The loss term, logits (K,) -> scalar, small when the attack succeeds.

    xent, targeted:     CE(f(z), t) = logsumexp(l) - l_t
    xent, untargeted:   -log(1 - p_label), the CE of "any label but the true one"
    margin (CW-style):  max(max_{j != t} l_j - l_t + confidence, 0); untargeted: the label's
                        lead over the best other label, plus confidence, clipped at 0
    """
    targeted = target >= 0
    wanted = jnp.where(targeted, target, label)
    is_wanted = jnp.arange(logits.shape[-1]) == wanted
    others = jnp.where(is_wanted, -jnp.inf, logits)
    if kind == "xent":
        total = jax.nn.logsumexp(logits)
        return jnp.where(targeted, total - logits[wanted], total - jax.nn.logsumexp(others))
    if kind == "margin":
        lead = logits[wanted] - jnp.max(others)  # > 0: the wanted label wins
        return jax.nn.relu(jnp.where(targeted, -lead, lead) + confidence)
    raise ValueError(f"unknown loss {kind!r}; choose one of {list(LOSSES)}")


class _Point(NamedTuple):
    """The current iterate of a solve: pixels z (n,), objective value, gradient (n,), success."""
    z: jax.Array
    value: jax.Array
    grad: jax.Array
    hits: jax.Array


class _Memory(NamedTuple):
    """L-BFGS pairs in a ring buffer: s, y (m, n); rho = 1 / s.y (0 marks an empty slot, which the
    two-loop recursion skips, so a reset only clears rho); head = the slot written next;
    gamma = scale of H0 = gamma I."""
    s: jax.Array
    y: jax.Array
    rho: jax.Array
    head: jax.Array
    gamma: jax.Array


class _LineSearch(NamedTuple):
    """The step being tried: direction d (n,), step a, trial P(z + a d) (n,), counters."""
    direction: jax.Array
    step: jax.Array
    trial: jax.Array
    backtracks: jax.Array
    evals: jax.Array  # evaluations in the current solve


class _Search(NamedTuple):
    """The per-example search over c and the closest success so far (best_z (n,))."""
    c: jax.Array
    c_success: jax.Array  # largest c whose solve succeeded (0: none yet)
    c_failure: jax.Array  # smallest c whose solve failed (inf: none yet)
    solves: jax.Array
    best_z: jax.Array
    best_dist2: jax.Array  # squared L2 distance of best_z (inf: no success yet)
    evals: jax.Array  # total evaluations (diagnostics)


def _free(z: jax.Array, grad: jax.Array) -> jax.Array:
    """Variables not held at a bound by a gradient pointing out of the box."""
    return ~(((z <= 0.0) & (grad > 0.0)) | ((z >= 1.0) & (grad < 0.0)))


def _projected_grad_norm(point: _Point) -> jax.Array:
    return jnp.max(jnp.abs(jnp.clip(point.z - point.grad, 0.0, 1.0) - point.z))


def _direction(point: _Point, memory: _Memory) -> jax.Array:
    """d = -H g on the free variables, H the L-BFGS inverse Hessian of the pairs projected onto
    them (zero elsewhere). Any rho > 0 keeps the recursion positive definite, so g.d < 0."""
    free = _free(point.z, point.grad)
    s, y, rho = memory.s, memory.y, memory.rho
    m = rho.shape[0]
    slots = (memory.head - 1 - jnp.arange(m)) % m  # newest first
    # fori_loops, not Python loops: unrolled, XLA fuses the elementwise chain of q into each
    # consumer and recomputes it, O(m^2) passes over the memory.

    def newest_first(i, carry):
        q, alphas = carry
        j = slots[i]
        alpha = rho[j] * jnp.dot(s[j], q)
        return q - alpha * jnp.where(free, y[j], 0.0), alphas.at[i].set(alpha)

    def oldest_first(i, r):
        j = slots[m - 1 - i]
        return r + (alphas[m - 1 - i] - rho[j] * jnp.dot(y[j], r)) * jnp.where(free, s[j], 0.0)

    q, alphas = jax.lax.fori_loop(0, m, newest_first, (jnp.where(free, point.grad, 0.0), jnp.zeros(m)))
    return -jax.lax.fori_loop(0, m, oldest_first, memory.gamma * q)


def _remember(memory: _Memory, s: jax.Array, y: jax.Array, accept: jax.Array) -> _Memory:
    """Writes the pair (s, y) over the oldest one if the step was accepted with positive
    curvature. A masked select over the memory: on CPU far cheaper than a scatter to a
    per-example slot or a shift of the memory."""
    sy, yy = jnp.dot(s, y), jnp.dot(y, y)
    keep = accept & (sy > _CURVATURE_EPS * yy)
    slot = keep & (jnp.arange(memory.rho.shape[0]) == memory.head)
    return _Memory(s=jnp.where(slot[:, None], s, memory.s), y=jnp.where(slot[:, None], y, memory.y),
                   rho=jnp.where(slot, 1.0 / jnp.maximum(sy, _TINY), memory.rho),
                   head=jnp.where(keep, (memory.head + 1) % memory.rho.shape[0], memory.head),
                   gamma=jnp.where(keep, sy / jnp.maximum(yy, _TINY), memory.gamma))


def _tree_where(condition: jax.Array, a, b):
    return jax.tree_util.tree_map(lambda u, v: jnp.where(condition, u, v), a, b)


def _next_c(search: _Search, point: _Point, x: jax.Array, solve_done: jax.Array) -> _Search:
    """Records a finished solve (if solve_done): keeps its point if it is the closest success,
    then brackets (x10 or /10) or bisects (geometric mean) c."""
    dist2 = jnp.sum((point.z - x) ** 2)
    success = solve_done & point.hits
    failure = solve_done & ~point.hits
    better = success & (dist2 < search.best_dist2)
    c_success = jnp.where(success, jnp.maximum(search.c_success, search.c), search.c_success)
    c_failure = jnp.where(failure, jnp.minimum(search.c_failure, search.c), search.c_failure)
    bracketed = (c_success > 0) & jnp.isfinite(c_failure)
    c_next = jnp.where(bracketed, jnp.sqrt(c_success * c_failure),
                       jnp.where(c_success > 0, c_success * 10.0, c_failure / 10.0))
    return _Search(
        c=jnp.where(solve_done, c_next, search.c), c_success=c_success, c_failure=c_failure,
        solves=search.solves + solve_done,
        best_z=jnp.where(better, point.z, search.best_z),
        best_dist2=jnp.where(better, dist2, search.best_dist2), evals=search.evals)


class _Problem(NamedTuple):
    """What stays fixed during one example's attack: x (n,), the first point (z = x) and the
    scale gamma of H0 for an empty memory (both set by the example's first trip)."""
    x: jax.Array
    start: _Point
    gamma0: jax.Array


class _State(NamedTuple):
    search: _Search  # solves = -1: a fresh example, whose next trip evaluates z = x
    point: _Point
    memory: _Memory
    line: _LineSearch
    problem: _Problem


def _where_rows(condition: jax.Array, a, b):
    """Per row (leading axis) of every leaf: a where condition (rows,), else b."""
    return jax.tree_util.tree_map(
        lambda u, v: jnp.where(condition.reshape(-1, *(1,) * (u.ndim - 1)), u, v), a, b)


def _project(z: jax.Array) -> jax.Array:
    """The projection onto the box [0, 1]^n."""
    return jnp.clip(z, 0.0, 1.0)


def _armijo(point: _Point, trial: _Point) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Whether the trial point decreases the objective enough, the slope along the arc at this
    step and the decrease (both feed the backtracking interpolation)."""
    slope = jnp.dot(point.grad, trial.z - point.z)
    decrease = trial.value - point.value
    accept = jnp.isfinite(trial.value) & (decrease <= _ARMIJO * jnp.minimum(slope, 0.0))
    return accept, slope, decrease


def _next_line(point: _Point, memory: _Memory, line: _LineSearch, new_step: jax.Array,
               solve_done: jax.Array, slope: jax.Array, decrease: jax.Array,
               evals: jax.Array) -> _LineSearch:
    """A new direction at step 1 (after an accepted step or a finished solve), else a backtrack
    to the minimizer of the quadratic through f(0), slope, f(step), within [0.1, 0.5] step."""
    quadratic = -slope * line.step / (2.0 * (decrease - slope))
    shorter = jnp.clip(jnp.nan_to_num(quadratic, nan=0.5 * line.step),
                       0.1 * line.step, 0.5 * line.step)
    direction = jnp.where(new_step, _direction(point, memory), line.direction)
    step = jnp.where(new_step, 1.0, shorter)
    return _LineSearch(direction, step, _project(point.z + step * direction),
                       jnp.where(new_step, 0, line.backtracks + 1),
                       jnp.where(solve_done, 0, evals))


@dataclasses.dataclass(frozen=True)
class LBFGSAttack:
    """Box-constrained L-BFGS minimum-distortion attack (Szegedy et al. 2014), one example.

    c_init: first penalty weight c on ||r||^2 (pixels in [0, 1]); c_steps: solves per example
    (bracketing by factors of 10, then bisection in log c); max_evals: function evaluations per
    solve (an L-BFGS iteration usually takes one); memory: L-BFGS pairs; tolerance: projected-
    gradient max-norm that ends a solve, relative to 2 c max|r|; loss: "xent" or "margin"
    (`attack_loss`); confidence: margin loss only; warm_start: start each solve where the
    previous one ended (else from x); extra_solves, extra_evals: an example with no success after
    `c_steps` solves searches c again from c_init with extra_evals evaluations per solve, for at
    most extra_solves solves, until its first success. Returns x itself where no solve succeeded.
    Defaults: mean distortion within 0.4% of scipy's L-BFGS-B (same objective and c search) on
    20 test images: ratio 1.0014 on FC100-100-10, 0.9999 on FC10, 1.0037 on the convnet.
    """

    c_init: float = 1.0
    c_steps: int = 10
    max_evals: int = 10
    memory: int = 3
    tolerance: float = 1e-3
    loss: str = "xent"
    confidence: float = 0.0
    warm_start: bool = True
    extra_solves: int = 10
    extra_evals: int = 50
    # examples per jitted call (split over the devices): a progress-bar step every second or two;
    # 2000 and 10000 attack FC100's 10000 test images within 2% of each other
    chunk_size: ClassVar[int] = 2000
    lanes: ClassVar[int] = 64  # examples in flight per device in `attack_rows`: their state in cache

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {list(LOSSES)}")
        if (self.c_init <= 0 or self.c_steps < 1 or self.max_evals < 1 or self.memory < 1
                or self.extra_solves < 0 or self.extra_evals < 1):
            raise ValueError("LBFGSAttack needs c_init > 0, c_steps, max_evals, memory, extra_evals "
                             f">= 1 and extra_solves >= 0: {self}")

    def __call__(self, logits_fn: LogitsFn, x: jax.Array, label: jax.Array, target: jax.Array,
                 key: jax.Array | None = None) -> jax.Array:
        """x (28, 28, 1) in [0, 1] -> the closest success found, in [0, 1] (x where none)."""
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn: LogitsFn, x: jax.Array, label: jax.Array,
                         target: jax.Array, key: jax.Array | None = None
                         ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The attack plus diagnostics: {"evals": evaluations used (int32), "c": the largest
        successful c (0 where none succeeded or x already succeeds)}."""
        del key  # deterministic
        shape, x = x.shape, x.reshape(-1).astype(jnp.float32)
        value_and_grad = self._value_and_grad(logits_fn, x, shape, label, target)

        def round_of_trips(state):
            trip = lambda _, s: self._trip(value_and_grad, s)  # noqa: E731
            return jax.lax.fori_loop(0, TRIPS_PER_ROUND, trip, state)

        state = jax.lax.while_loop(lambda s: jnp.any(self._active(s.search)), round_of_trips,
                                   self._fresh(x))
        x_adv = _project(state.search.best_z).reshape(shape)
        return x_adv, {"evals": state.search.evals, "c": state.search.c_success}

    def attack_rows(self, logits_fn: LogitsFn, x: jax.Array, label: jax.Array, target: jax.Array,
                    key: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`with_diagnostics` on every row of x (P, 28, 28, 1), label, target (P,), the same
        per example, with `lanes` examples in flight: a lane whose example is done takes the
        next one at the end of a round, so no lane waits for the slowest example of a batch.
        -> x_adv (P, 28, 28, 1), {"evals": (P,), "c": (P,)}. logits_fn: one example's."""
        del key  # deterministic
        rows, size = x.reshape(len(x), -1).astype(jnp.float32), len(x)
        lanes = min(self.lanes, size)

        def trip(state, lane_label, lane_target):
            value_and_grad = self._value_and_grad(logits_fn, state.problem.x, x.shape[1:],
                                                  lane_label, lane_target)
            return self._trip(value_and_grad, state)

        def round_of_trips(carry):
            state, example, *rest = carry
            state = jax.lax.fori_loop(0, TRIPS_PER_ROUND, lambda _, s: jax.vmap(trip)(
                s, label[jnp.maximum(example, 0)], target[jnp.maximum(example, 0)]), state)
            return self._refill(rows, state, example, *rest)

        carry = (jax.vmap(self._fresh)(rows[:lanes]), jnp.arange(lanes), jnp.int32(lanes),
                 (jnp.zeros_like(rows), jnp.zeros(size, jnp.int32), jnp.zeros(size)))
        carry = jax.lax.while_loop(
            lambda c: jnp.any(self._active(c[0].search)) | (c[2] < size), round_of_trips, carry)
        best, evals, c = carry[3]
        return best.reshape(x.shape), {"evals": evals, "c": c}

    def _refill(self, rows: jax.Array, state: _State, example: jax.Array, taken: jax.Array,
                out: tuple) -> tuple:
        """After a round: the lanes whose example is done write its result to `out` (at row
        `example`) and start the next untaken row (example -1: none left, the lane idles)."""
        done = ~self._active(state.search) & (example >= 0)
        at = jnp.where(done, example, len(rows))  # len(rows): out of bounds, dropped
        search = state.search
        out = tuple(o.at[at].set(v, mode="drop") for o, v in
                    zip(out, (_project(search.best_z), search.evals, search.c_success)))
        following = taken + jnp.cumsum(done) - 1
        start = done & (following < len(rows))
        fresh = jax.vmap(self._fresh)(rows[jnp.minimum(following, len(rows) - 1)], state.memory)
        example = jnp.where(start, following, jnp.where(done, -1, example))
        return (_where_rows(start, fresh, state), example,
                jnp.minimum(taken + jnp.sum(done), len(rows)), out)

    def _value_and_grad(self, logits_fn: LogitsFn, x: jax.Array, shape, label, target):
        """(z (n,), c) -> ((c ||z - x||^2 + loss, success), gradient in z)."""
        def objective(z, c):
            loss = lambda logits: attack_loss(logits, label, target, self.loss, self.confidence)  # noqa: E731
            value, logits = member_averaged(loss, logits_fn, z.reshape(shape))
            return c * jnp.sum((z - x) ** 2) + value, is_adversarial(logits, label, target)

        return jax.value_and_grad(objective, has_aux=True)

    def _fresh(self, x: jax.Array, memory: _Memory | None = None) -> _State:
        """An example not yet evaluated: its next trip evaluates z = x (the point's value inf, so
        that trip's step is accepted), counted in no solve, and `_begin` sets up the first solve
        at c_init from there. memory: pairs to reuse as storage (all cleared by rho = 0)."""
        n, zero, one = x.size, jnp.float32(0.0), jnp.float32(1.0)
        if memory is None:
            memory = _Memory(*(jnp.zeros((self.memory, n)),) * 2, None, None, None)
        memory = memory._replace(rho=jnp.zeros(self.memory), head=jnp.int32(0), gamma=one)
        point = _Point(x, jnp.float32(jnp.inf), jnp.zeros(n), jnp.bool_(False))
        search = _Search(jnp.float32(self.c_init), zero, jnp.float32(jnp.inf), jnp.int32(-1), x,
                         jnp.float32(jnp.inf), jnp.int32(-1))
        line = _LineSearch(jnp.zeros(n), one, x, jnp.int32(0), jnp.int32(-1))
        return _State(search, point, memory, line, _Problem(x, point._replace(value=zero), one))

    def _begin(self, state: _State, fresh: jax.Array) -> _State:
        """Where this trip evaluated a fresh example's z = x: that point starts its first solve
        (solves 0; none needed if x already succeeds) and sets the H0 scale of an empty memory."""
        # At z = x the norm term and its gradient vanish: one evaluation serves every c.
        point, search = state.point, state.search
        free_grad = jnp.where(_free(point.z, point.grad), point.grad, 0.0)
        gamma0 = 1.0 / jnp.maximum(jnp.linalg.norm(free_grad), _TINY)
        problem = _Problem(state.problem.x, _tree_where(fresh, point, state.problem.start),
                           jnp.where(fresh, gamma0, state.problem.gamma0))
        search = search._replace(
            solves=jnp.where(fresh, jnp.where(point.hits, self.c_steps, 0), search.solves),
            best_dist2=jnp.where(fresh & point.hits, 0.0, search.best_dist2))
        memory = state.memory._replace(gamma=jnp.where(fresh, gamma0, state.memory.gamma))
        return state._replace(search=search, memory=memory, problem=problem)

    def _active(self, search: _Search) -> jax.Array:
        """Solving still: within its c_steps solves, or past them with no success yet."""
        unsolved = ~jnp.isfinite(search.best_dist2) & (search.solves < self.c_steps + self.extra_solves)
        return (search.solves < self.c_steps) | unsolved

    def _trip(self, value_and_grad, state: _State) -> _State:
        """One evaluation per example: at the trial point, then an L-BFGS step, a backtrack, or
        the end of the solve and the start of the next (masked once the example is done); for a
        fresh example, at x, which starts its first solve."""
        search, point, memory, line, problem = state
        active, fresh = self._active(search), search.solves < 0
        (value, hits), grad = value_and_grad(line.trial, search.c)
        trial = _Point(line.trial, value, grad, hits)
        accept, slope, decrease = _armijo(point, trial)
        memory = _remember(memory, trial.z - point.z, grad - point.grad, accept & active)
        point = _tree_where(accept | fresh, trial, point)
        begun = self._begin(_State(search, point, memory, line, problem), fresh)
        search, memory, problem = begun.search, begun.memory, begun.problem
        evals = line.evals + 1
        solve_done = active & ~fresh & self._solve_ends(search, point, line, problem.x, accept, evals)
        search = search._replace(evals=search.evals + active)
        search, point, memory = self._finish_solve(search, point, memory, problem, solve_done)
        line = _next_line(point, memory, line, accept | solve_done | fresh, solve_done, slope,
                          decrease, evals)
        return _State(search, point, memory, line, problem)

    def _solve_ends(self, search: _Search, point: _Point, line: _LineSearch, x: jax.Array,
                    accept: jax.Array, evals: jax.Array) -> jax.Array:
        """Converged, the line search failed, or the solve's evaluations are spent."""
        budget = jnp.where(search.solves < self.c_steps, self.max_evals, self.extra_evals)
        # Converged: the projected gradient is small next to the norm term's gradient 2 c r,
        # which sets the scale of both terms at the optimum, whatever c is.
        scale = 2.0 * search.c * jnp.max(jnp.abs(point.z - x))
        converged = accept & (_projected_grad_norm(point) <= self.tolerance * scale)
        line_search_failed = ~accept & (line.backtracks + 1 >= _MAX_BACKTRACKS)
        return converged | line_search_failed | (evals >= budget)

    def _finish_solve(self, search: _Search, point: _Point, memory: _Memory, problem: _Problem,
                      solve_done: jax.Array) -> tuple[_Search, _Point, _Memory]:
        """Where a solve ended: records it, picks the next c, and restarts at that c."""
        c_before = search.c
        search = _next_c(search, point, problem.x, solve_done)
        # No success in c_steps solves: search c afresh, with the larger budget.
        again = solve_done & (search.solves == self.c_steps) & ~jnp.isfinite(search.best_dist2)
        search = search._replace(c=jnp.where(again, self.c_init, search.c),
                                 c_failure=jnp.where(again, jnp.inf, search.c_failure))
        point, memory = self._restart(point, memory, problem, search.c - c_before, solve_done, again)
        return search, point, memory

    def _restart(self, point: _Point, memory: _Memory, problem: _Problem, dc: jax.Array,
                 solve_done: jax.Array, again: jax.Array) -> tuple[_Point, _Memory]:
        """The next solve's first point and memory; dc = the change of c (0 where none ended)."""
        if not self.warm_start:  # restarts from x with an empty memory (rho = 0) at the new c.
            point = _tree_where(solve_done, problem.start, point)
            return point, memory._replace(rho=jnp.where(solve_done, 0.0, memory.rho),
                                          gamma=jnp.where(solve_done, problem.gamma0, memory.gamma))
        # Warm: the next solve starts where this one ended; value and gradient at the new c in
        # closed form.
        r = point.z - problem.x
        restart = point._replace(value=point.value + dc * jnp.sum(r * r),
                                 grad=point.grad + 2.0 * dc * r)
        point = _tree_where(solve_done, restart, point)
        memory = memory._replace(rho=jnp.where(solve_done, 0.0, memory.rho))
        # The search afresh starts afresh too, from x with an empty memory: a warm start from
        # where c_steps failed solves ended can sit where steps stay tiny.
        point = _tree_where(again, problem.start, point)
        return point, memory._replace(gamma=jnp.where(again, problem.gamma0, memory.gamma))
