"""A hand-written numpy reference of adversarial training on a linear text model.

The model: `logits = mean_t(E[x_t]) @ W + b`, softmax cross-entropy averaged
over the batch, plain SGD. Its gradients are written out by hand, so the
expected weights after one step do not depend on TensorFlow or on keras_adv.
Everything is float64.
"""

import numpy as np


def forward(params, x, y, sample_weight=None):
    """Returns (loss, probabilities, pooled embeddings)."""
    E, W, b = params
    pooled = E[x].mean(axis=1)
    logits = pooled @ W + b
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    per_sample = -np.log(probs[np.arange(len(y)), y])
    if sample_weight is not None:
        per_sample = per_sample * sample_weight
    return per_sample.mean(), probs, pooled


def gradients(params, x, y, sample_weight=None):
    """Returns (loss, [dE, dW, db]) by hand."""
    E, W, b = params
    batch, length = x.shape
    loss, probs, pooled = forward(params, x, y, sample_weight)
    dlogits = probs.copy()
    dlogits[np.arange(batch), y] -= 1.0
    dlogits /= batch
    if sample_weight is not None:
        dlogits *= sample_weight[:, None]
    dW = pooled.T @ dlogits
    db = dlogits.sum(axis=0)
    dpooled = dlogits @ W.T
    dE = np.zeros_like(E)
    for i in range(batch):
        for t in range(length):
            dE[x[i, t]] += dpooled[i] / length
    return loss, [dE, dW, db]


def l2_normalize(g):
    norm = np.sqrt(np.sum(g**2))
    return g / norm if np.isfinite(norm) and norm > 0 else np.zeros_like(g)


def project(r, radius):
    norm = np.sqrt(np.sum(r**2))
    return r * (radius / norm) if norm > radius else r


def touched_rows_norm(E, x):
    """The L2 norm of the rows of E that the batch's tokens touch, each once."""
    return np.sqrt(np.sum(E[np.unique(x)] ** 2))


def perturbation(params, x, y, method, epsilon, alpha=None, steps=1, sample_weight=None,
                 relative_epsilon=False):
    """The final perturbation r of the embedding matrix (FGM or PGD); with
    `relative_epsilon`, epsilon and alpha in units of the touched rows' norm."""
    E, W, b = params
    if relative_epsilon:
        unit = relative_units(E, x, False, root_mean_square=method == "fgsm")
        epsilon, alpha = epsilon * unit, None if alpha is None else alpha * unit
    r = np.zeros_like(E)
    for _ in range(steps if method == "pgd" else 1):
        _, (g, _, _) = gradients([E + r, W, b], x, y, sample_weight)
        r = _ascend(method, r, g, epsilon, alpha, l2_normalize, project)
    return r


def _ascend(method, r, g, epsilon, alpha, normalize, project_onto_ball):
    """One step of `method` from `r` along `g`, with the given norm and ball."""
    if method == "fgm":
        return epsilon * normalize(g)
    if method == "fgsm":
        return epsilon * np.sign(g)
    return project_onto_ball(r + alpha * normalize(g), epsilon)


def adversarial_sgd_step(
    params, x, y, lr, method, epsilon, objective, alpha=None, steps=1, sample_weight=None,
    relative_epsilon=False,
):
    """One adversarial SGD step. Returns (new params, clean loss, adversarial loss)."""
    E, W, b = params
    clean_loss, clean_grads = gradients(params, x, y, sample_weight)
    r = perturbation(params, x, y, method, epsilon, alpha, steps, sample_weight, relative_epsilon)
    adversarial_loss, adversarial_grads = gradients([E + r, W, b], x, y, sample_weight)
    if objective == "sum":
        update = [c + a for c, a in zip(clean_grads, adversarial_grads)]
    else:
        update = adversarial_grads
    new_params = [p - lr * g for p, g in zip(params, update)]
    return new_params, clean_loss, adversarial_loss


def plain_sgd_step(params, x, y, lr, sample_weight=None):
    loss, grads = gradients(params, x, y, sample_weight)
    return [p - lr * g for p, g in zip(params, grads)], loss


# Per example: each example's embedded sequence e_i = E[x_i] gets its own
# perturbation R_i (T x d), normalised or projected over its own entries.


def lookup_gradients(params, x, y, R=None):
    """Returns (loss, [dE, dW, db], de) with the lookups read as `E[x] + R`;
    `de` is the gradient w.r.t. the lookups' outputs (B x T x d)."""
    E, W, b = params
    batch, length = x.shape
    e = E[x] + (0.0 if R is None else R)
    pooled = e.mean(axis=1)
    logits = pooled @ W + b
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    loss = -np.log(probs[np.arange(batch), y]).mean()
    dlogits = probs.copy()
    dlogits[np.arange(batch), y] -= 1.0
    dlogits /= batch
    dW, db = pooled.T @ dlogits, dlogits.sum(axis=0)
    de = np.repeat((dlogits @ W.T)[:, None, :] / length, length, axis=1)
    dE = np.zeros_like(E)
    np.add.at(dE, x.reshape(-1), de.reshape(-1, E.shape[1]))
    return loss, [dE, dW, db], de


def _per_example_normalize(g):
    flat = g.reshape(len(g), -1)
    norms = np.sqrt((flat**2).sum(axis=1, keepdims=True))
    usable = np.isfinite(norms) & (norms > 0)
    return np.where(usable, flat / np.where(usable, norms, 1.0), 0.0).reshape(g.shape)


def _per_example_project(r, radius):
    flat = r.reshape(len(r), -1)
    radius = np.reshape(radius, (-1, 1)) if np.ndim(radius) else radius  # One per example.
    norms = np.sqrt((flat**2).sum(axis=1, keepdims=True))
    return np.where(norms > radius, flat * radius / np.where(norms > radius, norms, 1.0), flat).reshape(r.shape)


def example_norms(E, x):
    """Each example's `||E[x_i]||` (no padding in the linear model), `B x 1 x 1`:
    the unit of a relative size per example."""
    return np.sqrt((E[x] ** 2).sum(axis=(1, 2)))[:, None, None]


def relative_units(E, x, per_example, root_mean_square=False):
    """The unit of a relative size: the touched rows' norm (a number) or each
    example's (`B x 1 x 1`); for a sign method, the root-mean-square entry."""
    if per_example:
        norms, entries = example_norms(E, x), x.shape[1] * E.shape[1]
    else:
        norms, entries = touched_rows_norm(E, x), len(np.unique(x)) * E.shape[1]
    return norms / np.sqrt(entries) if root_mean_square else norms


def per_example_perturbation(params, x, y, method, epsilon, alpha=None, steps=1, relative_epsilon=False):
    """The final perturbation R (B x T x d) of each example's lookups; with
    `relative_epsilon`, epsilon and alpha in units of each example's norm
    (FGSM: of its root-mean-square entry)."""
    R = np.zeros(x.shape + (params[0].shape[1],))
    if relative_epsilon:
        unit = relative_units(params[0], x, True, root_mean_square=method == "fgsm")
        epsilon, alpha = epsilon * unit, None if alpha is None else alpha * unit
    for _ in range(steps if method == "pgd" else 1):
        _, _, g = lookup_gradients(params, x, y, R)
        R = _ascend(method, R, g, epsilon, alpha, _per_example_normalize, _per_example_project)
    return R


def per_example_adversarial_sgd_step(params, x, y, lr, method, epsilon, objective, alpha=None, steps=1,
                                     relative_epsilon=False):
    """One per-example adversarial SGD step: (new params, clean loss, adversarial loss, R)."""
    clean_loss, clean_grads, _ = lookup_gradients(params, x, y)
    R = per_example_perturbation(params, x, y, method, epsilon, alpha, steps, relative_epsilon)
    adversarial_loss, adversarial_grads, _ = lookup_gradients(params, x, y, R)
    update = adversarial_grads if objective == "adversarial" else [
        c + a for c, a in zip(clean_grads, adversarial_grads)
    ]
    return [p - lr * g for p, g in zip(params, update)], clean_loss, adversarial_loss, R


def fgsm_perturbation(params, x, y, epsilon, relative_epsilon=False):
    """FGSM on the touched rows of the matrix: epsilon * sign(dE); with
    `relative_epsilon`, epsilon in units of the touched rows' root-mean-square entry."""
    _, (dE, _, _) = gradients(params, x, y)
    if relative_epsilon:
        epsilon = epsilon * relative_units(params[0], x, False, root_mean_square=True)
    return epsilon * np.sign(dE)


def gradient_penalty_sgd_step(params, x, y, lr, weight, per_example=False, relative=False):
    """One SGD step on `L + weight / 2 * ||g||^2`, `g` the gradient of `L`
    w.r.t. the matrix (or, per example, w.r.t. the lookups' outputs); with
    `relative`, on `L + weight * sum(n * ||g||)`, `n` the norm of the touched
    rows (or of each example's sequence) before the step, held constant.

    The penalised loss's gradient is taken by central differences of its
    hand-written value: a route independent of any autodiff.

    Returns:
        (params after the step, clean loss, penalty).
    """
    unit = relative_units(params[0], x, per_example) if relative else None

    def penalized(flat):
        loss, grads, de = lookup_gradients(_unflatten(flat, params), x, y)
        g = de if per_example else grads[0]
        if relative:
            norms = np.sqrt((g**2).sum(axis=(1, 2), keepdims=True)) if per_example else np.sqrt(np.sum(g**2))
            penalty = weight * np.sum(unit * norms)
        else:
            penalty = 0.5 * weight * np.sum(g**2)
        return loss + penalty, loss, penalty

    flat = np.concatenate([p.reshape(-1) for p in params])
    step = 1e-6
    total_grad = np.zeros_like(flat)
    for i in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[i] += step
        down[i] -= step
        total_grad[i] = (penalized(up)[0] - penalized(down)[0]) / (2 * step)
    _, loss, penalty = penalized(flat)
    return _unflatten(flat - lr * total_grad, params), loss, penalty


def _unflatten(flat, like):
    out, start = [], 0
    for p in like:
        out.append(flat[start : start + p.size].reshape(p.shape))
        start += p.size
    return out


def free_lb_sgd_step(params, x, y, lr, alpha, steps, epsilon=0.0, relative_epsilon=False):
    """One SGD step of FreeLB from a zero start: the mean of the K passes'
    gradients, pass t at the per-example perturbation of the ascent so far;
    with `relative_epsilon`, alpha and epsilon in units of each example's norm.

    Returns:
        (params after the step, the first pass's loss, the K passes' mean loss).
    """
    E = params[0]
    R = np.zeros(x.shape + (E.shape[1],))
    unit = example_norms(E, x) if relative_epsilon else 1.0
    alpha, radius = alpha * unit, epsilon * unit
    total = [np.zeros_like(p) for p in params]
    losses = []
    for t in range(steps):
        loss, grads, de = lookup_gradients(params, x, y, R)
        total = [a + g / steps for a, g in zip(total, grads)]
        losses.append(loss)
        if t < steps - 1:
            R = R + alpha * _per_example_normalize(de)
            if epsilon > 0:
                R = _per_example_project(R, radius)
    return [p - lr * g for p, g in zip(params, total)], losses[0], float(np.mean(losses))


def awp_sgd_step(params, x, y, lr, alpha, epsilon, steps, objective, selected=(0, 1)):
    """One SGD step of AWP on the weights `params[i]` for `i` in `selected`
    (by default the matrices E and W): each step `w <- clip(w + alpha * ||w||
    * g / ||g||, w0 -+ epsilon * |w0|)`, `g` the gradient at the last step's
    weights (the clean ones first).

    Returns:
        (new params, clean loss, adversarial loss, whether the box clipped
        any entry).
    """
    clean_loss, clean_grads = gradients(params, x, y)
    weights = {i: params[i] for i in selected}
    grads = {i: clean_grads[i] for i in selected}
    clipped = False
    for _ in range(steps):
        for i in selected:
            w0, box = params[i], epsilon * np.abs(params[i])
            moved = weights[i] + alpha * np.sqrt(np.sum(weights[i] ** 2)) * l2_normalize(grads[i])
            clipped |= bool(np.any(np.abs(moved - w0) > box))
            weights[i] = np.clip(moved, w0 - box, w0 + box)
        perturbed = [weights.get(i, p) for i, p in enumerate(params)]
        adversarial_loss, adversarial_grads = gradients(perturbed, x, y)
        grads = {i: adversarial_grads[i] for i in selected}
    update = adversarial_grads if objective == "adversarial" else [
        c + a for c, a in zip(clean_grads, adversarial_grads)
    ]
    return [p - lr * g for p, g in zip(params, update)], clean_loss, adversarial_loss, clipped


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def _divergence_and_logit_gradient(p, logits, symmetric):
    """`mean_i KL(p_i || q_i)` (plus the reverse KL, if `symmetric`), `q =
    softmax(logits)`, and its gradient w.r.t. the logits, by hand."""
    q = _softmax(logits)
    batch = len(p)
    divergence = np.sum(p * (np.log(p) - np.log(q))) / batch
    grad = q - p
    if symmetric:
        a = np.log(q) - np.log(p)
        divergence += np.sum(q * a) / batch
        grad = grad + q * a - q * np.sum(q * a, axis=1, keepdims=True)
    return divergence, grad / batch


def vat_sgd_step(params, x, y, lr, noise, epsilon, xi, power_iterations, weight, symmetric=False,
                 sample_weight=None, relative_epsilon=False):
    """One SGD step of VAT per example on the linear model, from the given
    standard normal `noise` (B x T x d, the step's own draw); with
    `relative_epsilon`, xi and epsilon in units of each example's norm.

    Returns:
        (new params, clean loss, the divergence at the perturbation).
    """
    E, W, b = params
    batch, length = x.shape
    clean_loss, clean_grads = gradients(params, x, y, sample_weight)
    pooled = E[x].mean(axis=1)
    p = _softmax(pooled @ W + b)

    def at(R):
        pooled_r = (E[x] + R).mean(axis=1)
        divergence, dlogits = _divergence_and_logit_gradient(p, pooled_r @ W + b, symmetric)
        de = np.repeat((dlogits @ W.T)[:, None, :] / length, length, axis=1)
        return divergence, dlogits, pooled_r, de

    if relative_epsilon:
        xi, epsilon = xi * example_norms(E, x), epsilon * example_norms(E, x)
    d = xi * _per_example_normalize(noise)
    for _ in range(power_iterations):
        _, _, _, de = at(d)
        d = xi * _per_example_normalize(de)
    r = epsilon * _per_example_normalize(d)
    divergence, dlogits, pooled_r, de = at(r)
    dE = np.zeros_like(E)
    np.add.at(dE, x.reshape(-1), de.reshape(-1, E.shape[1]))
    vat_grads = [dE, pooled_r.T @ dlogits, dlogits.sum(axis=0)]
    update = [c + weight * v for c, v in zip(clean_grads, vat_grads)]
    return [q - lr * g for q, g in zip(params, update)], clean_loss, divergence


def neftune_sgd_step(params, x, y, lr, noise, alpha):
    """One SGD step of NEFTune on the linear model (no padding): the lookups
    read `E[x] + alpha / sqrt(T d) * noise`, `noise` uniform in [-1, 1]
    (B x T x d, the step's own draw), and the update is that pass's gradient.

    Returns:
        (new params, the noisy pass's loss).
    """
    E = params[0]
    loss, grads, _ = lookup_gradients(params, x, y, alpha / np.sqrt(x.shape[1] * E.shape[1]) * noise)
    return [p - lr * g for p, g in zip(params, grads)], loss


def rdrop_sgd_step(params, x, y, lr, alpha, masks):
    """One SGD step of R-Drop on the linear model with the pooled embedding
    multiplied by `masks[0]` in the first pass and `masks[1]` in the second:
    the loss `(L1 + L2) / 2 + alpha / 2 * D`, `D` the mean over examples of
    `(KL(p1 || p2) + KL(p2 || p1)) / 2`, differentiated by hand.

    Returns:
        (new params, the first pass's loss, D).
    """
    E, W, b = params
    batch, length = x.shape
    pooled = E[x].mean(axis=1)
    hidden = [pooled * mask for mask in masks]
    probs = [_softmax(h @ W + b) for h in hidden]
    logs = [np.log(p) for p in probs]
    kl = [(probs[0] * (logs[0] - logs[1])).sum(axis=1), (probs[1] * (logs[1] - logs[0])).sum(axis=1)]
    losses = [-np.log(p[np.arange(batch), y]).mean() for p in probs]
    onehot = np.eye(W.shape[1])[y]
    dlogits = []
    for me, other in ((0, 1), (1, 0)):
        # d KL(p||q)/d logits(p) = p (log p - log q - KL); d KL(q||p)/d logits(p) = p - q.
        dkl = probs[me] * (logs[me] - logs[other] - kl[me][:, None]) + probs[me] - probs[other]
        dlogits.append((probs[me] - onehot) / (2 * batch) + alpha / 2 * dkl / (2 * batch))
    dW = sum(h.T @ d for h, d in zip(hidden, dlogits))
    db = sum(d.sum(axis=0) for d in dlogits)
    dpooled = sum((d @ W.T) * mask for d, mask in zip(dlogits, masks))
    dE = np.zeros_like(E)
    np.add.at(dE, x.reshape(-1), np.repeat(dpooled[:, None, :] / length, length, axis=1).reshape(-1, E.shape[1]))
    divergence = float(((kl[0] + kl[1]) / 2).mean())
    return [p - lr * g for p, g in zip(params, [dE, dW, db])], losses[0], divergence
