"""The passes of an adversarial step on `tf.GradientTape`s, lookups tapped.

Keras 3 on TensorFlow and tf-keras in eager mode run their passes this way;
only how each computes its loss (`forward`) and applies the update differ.
"""

import collections

import tensorflow as tf

from keras_adv._stacks.lookup import tapped_lookups
from keras_adv._stacks.passes import (
    PENALTY_ACROSS_REPLICAS, Pass, attack, epsilon_now, free_lb, no_lookup_error,
    no_lookup_gradient_error, penalty_term, selected_weights, update_gradients, virtual_adversarial,
    weight_attack,
)
from keras_adv._stacks.tf_rows import (
    ExampleRows, add_gradients, global_batch_draw, padding_masks, perturbation_space, random_start,
    sum_across_replicas,
)
from keras_adv.methods import AWP, VAT, FreeLB

START_STEP_ACROSS_REPLICAS = (
    "`start_step` under a distribution strategy with several replicas works with "
    "`per_example=True` only: the touched rows of the global batch are gathered "
    "across replicas, which TensorFlow cannot do inside the `tf.cond` that "
    "switches from the warm-up. Use per_example=True, or start_step=0."
)

AWP_START_STEP_ACROSS_REPLICAS = (
    "AWP with `start_step` under a distribution strategy with several replicas is "
    "not supported: its gradients are summed across replicas, which TensorFlow "
    "cannot do inside the `tf.cond` that switches from the warm-up. Use "
    "start_step=0, or Keras 3 on JAX with keras.distribution.DataParallel."
)

__all__ = [
    "TapedStep", "taped_adversarial_passes", "taped_pass", "weight_pass", "read_unperturbed", "dense_gradients",
    "vat_noise", "global_batch_noise",
]


TapedStep = collections.namedtuple(
    "TapedStep", ["adversarial_loss", "gradients", "variables", "predictions", "adversarial"]
)
TapedStep.__doc__ = """What the passes of one step computed.

Attributes:
    adversarial_loss: The loss of the last perturbed pass, the gradient
        penalty, or VAT's divergence (0 in a plain warm-up step).
    gradients: The gradients to apply, one per variable.
    variables: The model's trainable variables.
    predictions: The clean pass's outputs, for the compiled metrics.
    adversarial: Whether the step was adversarial (a bool tensor; always
        true without `start_step`).
"""


def taped_adversarial_passes(step, model, inputs, clean_forward, perturbed_forward, scale_loss,
                             divergence_forward=None):
    """Runs the clean pass and the method's perturbed passes (`passes.py`).

    With `start_step`, a `tf.cond` on the optimizer's update count runs a
    plain step (the clean pass alone) until it reaches `start_step`, then
    the adversarial one: one traced function for both.

    Args:
        step: The stack's `AdversarialStep` (layer, settings).
        model: The model; its trainable variables are read after the clean
            pass, which builds a model that is not built yet (as Keras's own
            step does).
        inputs: The batch's inputs (where a per-example mask may come from).
        clean_forward, perturbed_forward: `() -> (loss to differentiate,
            loss to report, predictions)` of the clean and of a perturbed pass;
            for AWP, `perturbed_forward(shifted)` runs the model with each
            `(variable, value)` of `shifted` read as `value`.
        scale_loss: The optimizer's loss scaling (mixed precision), for a
            term added to the loss (the gradient penalty).
        divergence_forward: For VAT, `(clean predictions) -> (divergence to
            differentiate, divergence to report, None)` of a perturbed pass.

    Returns:
        A `TapedStep`.
    """
    def trainable():
        return list(model.trainable_variables)

    settings, layer = step.settings, step.layer

    def adversarial_step():
        # Under "adversarial" the update does not use the clean weight
        # gradients, so that pass asks only for the lookups' (its cost floor).
        clean = taped_pass(layer, clean_forward, trainable if settings.objective == "sum" else None)
        masks = padding_masks(layer, clean.lookups.ids, inputs) if settings.per_example else None
        space = perturbation_space(settings.per_example, clean.lookups, layer, masks)

        def perturbed_pass(perturbation, last):
            return taped_pass(
                layer, perturbed_forward, trainable if last else None,
                perturbation_at=lambda index, ids: space.at(index, ids, perturbation),
                lookup_gradients=not last,
            )

        epsilon = epsilon_now(settings, model.optimizer.iterations)
        if epsilon is not None:
            epsilon = tf.cast(epsilon, tf.float32)
        adversarial = attack(step, space, clean, perturbed_pass, epsilon)
        grads = update_gradients(settings.objective, clean.gradients, adversarial.gradients, add_gradients)
        return adversarial.loss, grads, clean.predictions

    def free_lb_step():
        # FreeLB: K passes from a random start, every one's weight gradients
        # (of L / K) summed; the first is the clean pass where the start is 0.
        method = settings.method
        steps = method.steps
        starts = []

        def random_start_at(index, ids):
            seed = _seed_pair(step.seed, model.optimizer.iterations, index)
            mask = padding_masks(layer, [ids], inputs)[0]
            starts.append(random_start(method, ids, mask, layer.embeddings.shape[1], seed))
            return starts[-1]

        def first_pass():
            first = taped_pass(
                layer, clean_forward, trainable,
                perturbation_at=random_start_at if method.init_magnitude else None,
                lookup_gradients=steps > 1, scale=1 / steps,
            )
            return first, starts

        def space_of(first):
            return ExampleRows(first.lookups, layer, padding_masks(layer, first.lookups.ids, inputs))

        def perturbed_pass(space, perturbation, last):
            return taped_pass(
                layer, perturbed_forward, trainable,
                perturbation_at=lambda index, ids: space.at(index, ids, perturbation),
                lookup_gradients=not last, scale=1 / steps,
            )

        epsilon = epsilon_now(settings, model.optimizer.iterations)
        if epsilon is not None:
            epsilon = tf.cast(epsilon, tf.float32)
        first, grads, loss = free_lb(step, first_pass, space_of, perturbed_pass, add_gradients, epsilon)
        return loss, grads, first.predictions

    def penalized_step():
        # One pass; the penalty on its lookups' gradient joins the loss, and
        # the outer tape differentiates that gradient a second time.
        with tf.GradientTape() as outer:
            with tf.GradientTape(watch_accessed_variables=False) as inner:

                def watch(index, ids, outputs):
                    inner.watch(outputs)
                    return outputs

                with tapped_lookups(layer, watch) as lookups:
                    scaled, loss, predictions = clean_forward()
            if not lookups.outputs:
                raise no_lookup_error(layer)
            lookup_grads = inner.gradient(loss, lookups.outputs)
            if all(g is None for g in lookup_grads):
                raise no_lookup_gradient_error(layer)
            lookup_grads = [
                tf.zeros_like(o) if g is None else tf.convert_to_tensor(g)
                for o, g in zip(lookups.outputs, lookup_grads)
            ]
            masks = padding_masks(layer, lookups.ids, inputs) if settings.per_example else None
            space = perturbation_space(settings.per_example, lookups, layer, masks)
            penalty = penalty_term(settings, space, space.rows(lookups.ids, lookup_grads))
            total = scaled + scale_loss(tf.cast(penalty, scaled.dtype))
        return penalty, outer.gradient(total, trainable()), predictions

    def weight_step():
        # AWP: the perturbed passes read perturbed copies of the selected
        # weights; the variables are never written.
        variables = trainable()
        indices = selected_weights(settings.method, variables, model.name)
        selected = [variables[i] for i in indices]
        clean = weight_pass(clean_forward, variables)
        originals = [tf.convert_to_tensor(v) for v in selected]

        def perturbed_pass(perturbations):
            shifted = [(v, w + tf.cast(r, w.dtype)) for v, w, r in zip(selected, originals, perturbations)]
            return weight_pass(lambda: perturbed_forward(shifted), variables, substitutes=shifted)

        epsilon = epsilon_now(settings, model.optimizer.iterations)
        if epsilon is not None:
            epsilon = tf.cast(epsilon, tf.float32)
        last, grads = weight_attack(
            step, clean, indices, originals, perturbed_pass,
            add_gradients, dense=lambda gradients: dense_gradients(gradients, selected), epsilon=epsilon,
            reduce=sum_across_replicas if across_replicas else None,
        )
        return last.loss, grads, clean.predictions

    def virtual_step():
        # VAT: the clean pass, the power iterations on the divergence from
        # its outputs, and the divergence at the perturbation, weighted.
        method = settings.method
        clean = taped_pass(layer, clean_forward, trainable, lookup_gradients=False)
        space = ExampleRows(clean.lookups, layer, padding_masks(layer, clean.lookups.ids, inputs))
        reference = tf.nest.map_structure(tf.stop_gradient, clean.predictions)

        def divergence_pass(perturbation, last):
            return taped_pass(
                layer, lambda: divergence_forward(reference), trainable if last else None,
                perturbation_at=lambda index, ids: space.at(index, ids, perturbation),
                lookup_gradients=not last, scale=method.weight if last else None,
            )

        epsilon = epsilon_now(settings, model.optimizer.iterations)
        if epsilon is not None:
            epsilon = tf.cast(epsilon, tf.float32)
        # The probes need only the clean outputs and the noise, but start
        # after the clean backward all the same: else TensorFlow runs the two
        # side by side and holds both passes' activations at once.
        finished = [g for g in tf.nest.flatten(clean.gradients, expand_composites=True) if g is not None]
        with tf.control_dependencies(finished):
            noises = global_batch_noise(step.seed, model.optimizer.iterations, clean.lookups.outputs)
        last = virtual_adversarial(step, space, noises, divergence_pass, epsilon)
        grads = update_gradients("sum", clean.gradients, last.gradients, add_gradients)
        return last.loss, grads, clean.predictions

    def plain_step():
        clean = weight_pass(clean_forward, trainable())
        return tf.zeros_like(clean.loss), clean.gradients, clean.predictions

    replica = tf.distribute.get_replica_context()
    across_replicas = replica is not None and replica.num_replicas_in_sync > 1
    if settings.method.steps == 0:
        if across_replicas and not settings.per_example:
            raise NotImplementedError(PENALTY_ACROSS_REPLICAS)
        adversarial_step = penalized_step
    elif isinstance(settings.method, FreeLB):
        adversarial_step = free_lb_step
    elif isinstance(settings.method, AWP):
        adversarial_step = weight_step
    elif isinstance(settings.method, VAT):
        adversarial_step = virtual_step
    if not settings.start_step:
        return _adversarial_only(adversarial_step, trainable)
    if across_replicas and isinstance(settings.method, AWP):
        raise NotImplementedError(AWP_START_STEP_ACROSS_REPLICAS)
    if across_replicas and not settings.per_example:
        raise NotImplementedError(START_STEP_ACROSS_REPLICAS)
    if not model.built:
        raise ValueError(
            f"`start_step` needs model '{model.name}' built before its first step "
            f"(the warm-up and the adversarial step are traced together). Build it "
            f"first: `model.build(input_shape)` or call it on a batch."
        )
    adversarial = tf.greater_equal(model.optimizer.iterations, settings.start_step)
    loss, grads, predictions = tf.cond(adversarial, adversarial_step, plain_step)
    return TapedStep(loss, grads, trainable(), predictions, adversarial)


def _adversarial_only(adversarial_step, trainable):
    loss, grads, predictions = adversarial_step()
    return TapedStep(loss, grads, trainable(), predictions, tf.constant(True))


def vat_noise(seed, step_count, index, shape):
    """VAT's standard normal noise for lookup `index`: a stateless function
    of `seed`, the step count and the index (the model gains no random state)."""
    return tf.random.stateless_normal(shape, _seed_pair(seed, step_count, index))


def _seed_pair(seed, step_count, index):
    """The stateless seed of lookup `index` at a step: a function of the
    step's seed and count alone (the model gains no random state)."""
    return tf.stack([tf.constant(seed + index, tf.int64), tf.cast(step_count, tf.int64)])


def global_batch_noise(seed, step_count, outputs):
    """`vat_noise` of each lookup output's shape; under a strategy, each
    replica's share of the global batch's (`tf_rows.global_batch_draw`)."""
    return [
        global_batch_draw(lambda shape, index=index: vat_noise(seed, step_count, index, shape), tf.shape(output))
        for index, output in enumerate(outputs)
    ]


def dense_gradients(gradients, weights):
    # The embedding's gradient comes as IndexedSlices (or None where the
    # loss does not use a weight); AWP's norms and clipping are elementwise
    # over the whole weight.
    return [tf.zeros(w.shape, w.dtype) if g is None else tf.convert_to_tensor(g)
            for g, w in zip(gradients, weights)]


def weight_pass(forward, weights, substitutes=()):
    """Runs `forward()` on a tape; returns a `Pass` with the gradients of
    `weights` and no lookups.

    Args:
        substitutes: `(variable, value)` pairs of weights that `forward()`
            reads as `value` (AWP's perturbed copies): their gradients are
            `value`'s.

    Raises:
        NotImplementedError: If `forward()` read a substituted variable
            itself (a tf-keras layer that holds it where the substitution
            does not reach): that pass would silently mix in the original.
    """
    values = [value for _, value in substitutes]
    with tf.GradientTape() as tape:
        tape.watch(values)
        loss, reported, predictions = forward()
    substituted = {id(variable): value for variable, value in substitutes}
    sources = [substituted.get(id(w), w) for w in weights]
    originals = [variable for variable, _ in substitutes]
    grads = tape.gradient(loss, sources + originals)
    for variable, grad in zip(originals, grads[len(sources):]):
        if grad is not None:
            raise NotImplementedError(read_unperturbed(variable))
    return Pass(reported, grads[: len(sources)], None, None, predictions)


def read_unperturbed(variable):
    return (
        f"AWP cannot perturb weight '{variable.name}': the model reads it other than "
        f"through the attribute of the layer that made it (a weight regularizer, or a "
        f"layer that keeps its weights in a list), so a perturbed pass would read the "
        f"original. Leave it out with AWP's `weights` (a pattern or a callable), or use "
        f"Keras 3, whose stateless scope reaches every read."
    )


def taped_pass(layer, forward, weights=None, perturbation_at=None, lookup_gradients=True, scale=None):
    """Runs `forward()` with the lookups of `layer` perturbed and watched.

    Args:
        layer: The embedding layer.
        forward: `() -> (loss to differentiate, loss to report, predictions
            or None)`, run inside the tape.
        weights: `() -> variables` whose gradients the pass needs, read after
            `forward()`; None for none (the tape then records only what
            depends on the lookups).
        perturbation_at: `(index, ids) -> perturbation` added to the output
            of the pass's `index`-th lookup, or None for the clean pass.
        lookup_gradients: Whether to differentiate the lookups' outputs.
        scale: A factor of the loss to differentiate (FreeLB's `1 / K`), or None.

    Returns:
        A `Pass`, with the reported loss.
    """
    with tf.GradientTape(watch_accessed_variables=weights is not None) as tape:

        def transform(index, ids, outputs):
            if perturbation_at is not None:
                outputs = outputs + tf.cast(perturbation_at(index, ids), outputs.dtype)
            tape.watch(outputs)
            return outputs

        with tapped_lookups(layer, transform) as lookups:
            loss, reported, predictions = forward()
            if scale is not None:
                loss = loss * tf.cast(scale, loss.dtype)
    if not lookups.outputs:
        raise no_lookup_error(layer)
    sources = [] if weights is None else weights()
    targets = sources + (lookups.outputs if lookup_gradients else [])
    grads = tape.gradient(loss, targets)
    lookup_grads = grads[len(sources):] if lookup_gradients else None
    if lookup_gradients and all(g is None for g in lookup_grads):
        raise no_lookup_gradient_error(layer)
    if lookup_grads is not None:
        lookup_grads = [
            tf.zeros_like(o) if g is None else tf.convert_to_tensor(g)
            for o, g in zip(lookups.outputs, lookup_grads)
        ]
    return Pass(reported, grads[: len(sources)], lookups, lookup_grads, predictions)
