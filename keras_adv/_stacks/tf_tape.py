"""The plans' adapter (`passes.py`) for TensorFlow's eager stacks (Keras 3 on
TensorFlow, tf-keras): passes on `tf.GradientTape`s, lookups tapped. Only
how each stack computes its loss (`forward`) and applies the update differ.
"""

import tensorflow as tf

from keras_adv._stacks.lookup import tapped_lookups
from keras_adv._stacks.passes import Pass, checked_lookup_gradients, no_lookup_error
from keras_adv._stacks.tf_rows import (
    add_gradients, global_batch_draw, padding_masks, perturbation_space, replica_count, sum_across_replicas,
)

__all__ = ["TensorFlowPasses", "TapePasses", "read_unperturbed", "noise"]

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


class TensorFlowPasses:
    """What the adapters on TensorFlow share, eager or in a TF1 graph: they
    hold `step`, `model`, `layer`, `inputs` (or None), `weights` (the
    trainable variables) and `iterations`."""

    # The weight gradients of the latest pass, which the noise waits for.
    finished = ()

    @property
    def replicas(self):
        return replica_count()

    def space(self, lookups, per_example):
        masks = self.masks(lookups.ids) if per_example else None
        return perturbation_space(per_example, lookups, self.layer, masks)

    def masks(self, ids_list):
        return padding_masks(self.layer, ids_list, self.inputs)

    add = staticmethod(add_gradients)

    @staticmethod
    def stop_gradient(structure):
        return tf.nest.map_structure(tf.stop_gradient, structure)

    @property
    def selected(self):
        return self.step.settings.method.selected(self.weights, self.model.name)

    def dense(self, gradients, indices):
        # The embedding's gradient comes as IndexedSlices (None where the loss
        # does not use a weight); AWP's norms are over the whole weight.
        return [tf.zeros(self.weights[i].shape, self.weights[i].dtype) if g is None else tf.convert_to_tensor(g)
                for g, i in zip(gradients, indices)]

    def reduce(self, gradients):
        # The norms are the global batch's.
        return sum_across_replicas(gradients) if self.replicas > 1 else gradients

    def noise(self, index, like, kind):
        # VAT's probes need only the clean outputs and the noise, but start
        # after the clean backward all the same: else TensorFlow runs the two
        # side by side and holds both passes' activations at once.
        with tf.control_dependencies(self.finished):
            draw = lambda shape: noise(kind, self.step.seed, self.iterations, index, shape)
            return global_batch_draw(draw, tf.shape(like))


class TapePasses(TensorFlowPasses):
    """The plans' adapter for one eager TensorFlow step.

    Args:
        step: The stack's `AdversarialStep`.
        model: The model (a pass builds one not built yet, as Keras's step does).
        inputs: The batch's inputs (where a per-example mask may come from).
        forward: `(clean=False, reference=None, substitutes=()) -> (loss to
            differentiate, loss, predictions)`: the clean pass (updating the
            loss trackers), the divergence from `reference`, or a pass reading
            each `(variable, value)` of `substitutes` as `value`.
        scale_loss: The optimizer's loss scaling (mixed precision).
        divergence: `(reference, outputs) -> D`, divided as the loss is
            across replicas.
    """

    def __init__(self, step, model, inputs, forward, scale_loss, divergence):
        self.step, self.model, self.layer, self.inputs = step, model, step.layer, inputs
        self.forward, self._scale_loss, self.divergence = forward, scale_loss, divergence
        self.iterations = model.optimizer.iterations

    def run(self, perturbation_at=None, *, weights=False, lookup_gradients=False, scale=None, clean=False,
            reference=None, shifted=None):
        variables = self.weights if shifted else ()  # AWP's passes read them before the pass.
        substitutes = [(variables[i], tf.convert_to_tensor(variables[i]) + tf.cast(r, variables[i].dtype))
                       for i, r in (shifted or {}).items()]
        with tf.GradientTape(watch_accessed_variables=weights) as tape:
            tape.watch([value for _, value in substitutes])

            def transform(index, ids, outputs):
                if perturbation_at is not None:
                    outputs = outputs + tf.cast(perturbation_at(index, ids, outputs), outputs.dtype)
                tape.watch(outputs)
                return outputs

            with tapped_lookups(self.layer, transform) as lookups:
                scaled, loss, predictions = self.forward(clean, reference, substitutes)
                if scale is not None:
                    scaled = scaled * tf.cast(scale, scaled.dtype)
        if self.layer is not None and not lookups.outputs:
            raise no_lookup_error(self.layer)
        substituted = {id(variable): value for variable, value in substitutes}
        sources = [substituted.get(id(w), w) for w in self.weights] if weights else []
        originals = [variable for variable, _ in substitutes]
        looked_up = lookups.outputs if lookup_gradients else []
        grads = tape.gradient(scaled, sources + looked_up + originals)
        for variable, unreached in zip(originals, grads[len(sources) + len(looked_up):]):
            if unreached is not None:  # Read other than through the substitution.
                raise NotImplementedError(read_unperturbed(variable))
        lookup_grads = None
        if lookup_gradients:
            lookup_grads = checked_lookup_gradients(
                self.layer, lookups, grads[len(sources):len(sources) + len(looked_up)], dense=tf.convert_to_tensor
            )
        if weights:
            self.finished = [g for g in tf.nest.flatten(grads[:len(sources)], expand_composites=True) if g is not None]
        return Pass(loss, grads[:len(sources)], lookups, lookup_grads, predictions)

    def differentiate(self, objective):
        with tf.GradientTape() as outer:

            def forward(clean=False, lookup_gradients=False):
                # Inside the outer tape: the lookups' gradient is differentiable.
                with tf.GradientTape(watch_accessed_variables=False) as inner:
                    watch = lambda index, ids, outputs: inner.watch(outputs) or outputs
                    with tapped_lookups(self.layer if lookup_gradients else None, watch) as lookups:
                        scaled, loss, predictions = self.forward(clean)
                lookup_grads = None
                if lookup_gradients:
                    if not lookups.outputs:
                        raise no_lookup_error(self.layer)
                    gradients = inner.gradient(loss, lookups.outputs)
                    lookup_grads = checked_lookup_gradients(self.layer, lookups, gradients, dense=tf.convert_to_tensor)
                return scaled, Pass(loss, None, lookups, lookup_grads, predictions)

            total, aux = objective(forward)
        return outer.gradient(total, self.weights), aux

    def scale_loss(self, term, like):
        return self._scale_loss(tf.cast(term, like.dtype))

    def cond(self, start_step, adversarial, plain):
        settings = self.step.settings
        if self.replicas > 1 and settings.method.plan == "weight_attack":
            raise NotImplementedError(AWP_START_STEP_ACROSS_REPLICAS)
        if self.replicas > 1 and settings.method.embedding and not settings.per_example:
            raise NotImplementedError(START_STEP_ACROSS_REPLICAS)
        if not self.model.built:
            raise ValueError(
                f"`start_step` needs model '{self.model.name}' built before its first step "
                f"(the warm-up and the adversarial step are traced together). Build it "
                f"first: `model.build(input_shape)` or call it on a batch."
            )
        on = tf.greater_equal(self.iterations, start_step)
        return tf.cond(on, adversarial, plain), on

    @property
    def weights(self):
        # Read at each use: the first pass builds a model not built yet.
        return self.model.trainable_variables

    def weight_values(self, indices):
        return [tf.convert_to_tensor(self.weights[i]) for i in indices]


def noise(kind, seed, step_count, index, shape):
    """The step's "normal" (VAT's) or "uniform" in [-1, 1] (FreeLB's start,
    NEFTune's) noise for lookup `index`, stateless in `seed`, the step count
    and the index (the model gains no random state)."""
    seed = tf.stack([tf.constant(seed + index, tf.int64), tf.cast(step_count, tf.int64)])
    if kind == "normal":
        return tf.random.stateless_normal(shape, seed)
    return tf.random.stateless_uniform(shape, seed, minval=-1.0, maxval=1.0)


def read_unperturbed(variable):
    return (
        f"AWP cannot perturb weight '{variable.name}': the model reads it other than "
        f"through the attribute of the layer that made it (a weight regularizer, or a "
        f"layer that keeps its weights in a list), so a perturbed pass would read the "
        f"original. Leave it out with AWP's `weights` (a pattern or a callable), or use "
        f"Keras 3, whose stateless scope reaches every read."
    )
