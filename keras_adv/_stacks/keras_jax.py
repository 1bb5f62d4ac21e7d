"""Keras 3 on the JAX backend: an adversarial `train_step(state, data) ->
(logs, state)` on the model instance, a pure function that Keras jit-compiles
as its own (`keras/src/backend/jax/trainer.py`), under `keras.distribution`
too (every array is global: the compiler adds the collectives).

JAX differentiates functions of their arguments, so a pass that needs the
gradient w.r.t. the lookups' outputs adds a zero `delta` at each lookup (its
shape from a trace, `jax.make_jaxpr`) and differentiates w.r.t. it.
"""

import jax
import keras
from keras import ops

from keras_adv._stacks import keras3
from keras_adv._stacks.lookup import Lookups, tapped_lookups
from keras_adv._stacks.passes import AdversarialStep, Pass, no_lookup_error, no_lookup_gradient_error, planned_step

__all__ = ["install", "uninstall", "is_installed", "is_compiled", "AdversarialTrainStep", "noise"]

# The rest of the stack contract, the same on every Keras 3 backend.
is_compiled, is_installed, uninstall = keras3.is_compiled, keras3.is_installed, keras3.uninstall

NNX_NOT_SUPPORTED = (
    "keras_adv does not support the JAX backend with Flax NNX enabled: Keras then "
    "calls the class's `train_step` (`type(model).train_step`), so a step set on "
    "the model instance would be silently bypassed. Turn NNX off "
    "(`keras.config.disable_flax_nnx()` or KERAS_NNX_ENABLED unset), or use the "
    "TensorFlow or PyTorch backend."
)


class AdversarialTrainStep(AdversarialStep):
    """A Keras 3 JAX `train_step` with embedding-space adversarial training."""

    def __call__(self, model, state, data):
        keras3.check_embedding(self.layer)
        passes = _Passes(self, model, state, data)
        outcome, adversarial = planned_step(self, passes)
        trainable, optimizer_variables = model.optimizer.stateless_apply(
            passes.optimizer_variables, outcome.gradients, passes.trainable
        )
        logs, metrics_variables = _logs(model, passes, outcome, adversarial)
        return logs, (trainable, passes.non_trainable, optimizer_variables, metrics_variables)


class _Passes(keras3.Keras3Passes):
    """The plans' adapter for one JAX step: passes as pure functions of the
    step's state, carried from pass to pass (the metrics' from the clean one)."""

    def __init__(self, step, model, state, data):
        self.trainable, self.non_trainable, self.optimizer_variables, self.metrics = state
        self.x, self.y, self.sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self.step, self.model, self.layer = step, model, step.layer
        self.optimizer = model.optimizer
        # Read in the state: Keras's JAX `fit` empties the variables while it runs.
        self.iterations = keras3.update_count(self.optimizer, self.optimizer_variables)
        if self.layer is not None:  # AWP and R-Drop perturb no embedding.
            self.matrix = _value_in(
                list(self.trainable) + list(self.non_trainable),
                model.trainable_variables + model.non_trainable_variables, self.layer.embeddings,
            )
            self.shapes = self._lookup_output_shapes()

    def _forward(self, trainable, non_trainable, deltas=None, perturbation_at=None, reference=None):
        """One pass as a function of the weights and of what is added at the
        lookups: `(scaled loss, (loss, y_pred, non_trainable, metrics, ids,
        outputs))`; with a `reference` (the clean outputs), its loss is the
        divergence from them."""

        def transform(index, ids, outputs):
            if perturbation_at is not None:
                outputs = outputs + ops.cast(perturbation_at(index, ids, outputs), outputs.dtype)
            return outputs if deltas is None else outputs + deltas[index]

        with tapped_lookups(self.layer, transform) as lookups:
            if reference is None:
                scaled, (loss, y_pred, non_trainable, metrics) = self.model.compute_loss_and_updates(
                    trainable, non_trainable, self.metrics, self.x, self.y, self.sample_weight,
                    training=True, optimizer_variables=self.optimizer_variables,
                )
            else:
                y_pred, non_trainable = self.model.stateless_call(trainable, non_trainable, self.x, training=True)
                loss, metrics = self.divergence(reference, y_pred), self.metrics
                scaled = self._scaled(loss)
        if self.layer is not None and not lookups.outputs:
            raise no_lookup_error(self.layer)
        return scaled, (loss, y_pred, non_trainable, metrics, lookups.ids, lookups.outputs)

    def _lookup_output_shapes(self):
        """The shape of each lookup's output, from a trace of the clean pass,
        which also says whether the loss depends on them (a JAX gradient is
        never missing, only zero): if not, a `ValueError`."""

        def loss_and_lookups(trainable, non_trainable):
            scaled, (*_, outputs) = self._forward(trainable, non_trainable)
            return scaled, outputs

        traced, (_, shapes) = jax.make_jaxpr(loss_and_lookups, return_shape=True)(
            self.trainable, self.non_trainable
        )
        loss_var, *lookup_vars = traced.jaxpr.outvars
        if not _depends_on(traced.jaxpr, loss_var, lookup_vars):
            raise no_lookup_gradient_error(self.layer)
        return shapes

    def _scaled(self, loss):
        """`loss` scaled by the optimizer (mixed precision), as Keras scales its own."""
        mapping = list(zip(self.optimizer.variables, self.optimizer_variables))
        with keras.StatelessScope(state_mapping=mapping):
            return self.optimizer.scale_loss(loss)

    def _deltas(self):
        return [ops.zeros(shape.shape, shape.dtype) for shape in self.shapes]

    def run(self, perturbation_at=None, *, weights=False, lookup_gradients=False, scale=None, clean=False,
            reference=None, shifted=None):
        trainable = list(self.trainable)
        for i, perturbation in (shifted or {}).items():
            trainable[i] = trainable[i] + perturbation
        deltas = self._deltas() if lookup_gradients else None

        def loss_of(trainable, deltas):
            scaled, aux = self._forward(trainable, self.non_trainable, deltas, perturbation_at, reference)
            return (scaled if scale is None else scaled * scale), aux

        argnums = (0,) * weights + (1,) * lookup_gradients
        (_, aux), grads = jax.value_and_grad(loss_of, argnums=argnums, has_aux=True)(trainable, deltas)
        loss, y_pred, self.non_trainable, metrics, ids, outputs = aux
        if clean:
            self.metrics = metrics
        return Pass(loss, grads[0] if weights else None, Lookups(ids, outputs),
                    grads[-1] if lookup_gradients else None, y_pred)

    def differentiate(self, objective):
        def loss_of(trainable):
            state = dict(non_trainable=self.non_trainable, metrics=self.metrics)

            def forward(clean=False, lookup_gradients=False):
                def pass_of(deltas):
                    scaled, aux = self._forward(trainable, state["non_trainable"], deltas)
                    return aux[0], (scaled, aux)

                lookup_grads = None
                if lookup_gradients:
                    (_, (scaled, aux)), lookup_grads = jax.value_and_grad(pass_of, has_aux=True)(self._deltas())
                else:
                    _, (scaled, aux) = pass_of(None)
                loss, y_pred, state["non_trainable"], metrics, ids, outputs = aux
                if clean:
                    state["metrics"] = metrics
                return scaled, Pass(loss, None, Lookups(ids, outputs), lookup_grads, y_pred)

            total, aux = objective(forward)
            return total, (aux, state["non_trainable"], state["metrics"])

        (_, (aux, self.non_trainable, self.metrics)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            self.trainable
        )
        return grads, aux

    def scale_loss(self, term, like):
        return self._scaled(ops.cast(term, like.dtype))

    def noise(self, index, like, kind):
        return noise(kind, self.step.seed, self.iterations, index, tuple(like.shape))

    def cond(self, start_step, adversarial, plain):
        adversary = ops.greater_equal(self.iterations, start_step)

        def branch(plan):
            def run(state):
                self.non_trainable, self.metrics = state
                return plan(), (self.non_trainable, self.metrics)

            return run

        outcome, (self.non_trainable, self.metrics) = jax.lax.cond(
            adversary, branch(adversarial), branch(plain), (self.non_trainable, self.metrics)
        )
        return outcome, adversary

    add = staticmethod(ops.add)

    def weight_values(self, indices):
        return [self.trainable[i] for i in indices]

    def dense(self, gradients, indices):
        return gradients


def _logs(model, passes, outcome, adversarial):
    """`(logs, metrics variables)`, as Keras's `_update_metrics_variables`, plus
    the term's mean (not counting a warm-up step)."""
    size = keras3.batch_size(passes.x)
    mapping = list(zip(model.metrics_variables, passes.metrics))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        model._loss_tracker.update_state(outcome.loss, sample_weight=size)
        with keras3.reporting(model, outcome.term, size * ops.cast(adversarial, "float32")):
            logs = model.compute_metrics(passes.x, passes.y, outcome.predictions, passes.sample_weight)
    updated = []
    for variable in model.metrics_variables:
        value = scope.get_current_value(variable)
        updated.append(variable.value if value is None else value)
    return logs, updated


def noise(kind, seed, step_count, index, shape):
    """The step's "normal" or "uniform" in [-1, 1] noise for lookup `index`, a
    stateless function of `seed`, the step count and the index."""
    key = jax.random.fold_in(jax.random.key(seed + index), step_count)
    if kind == "normal":
        return jax.random.normal(key, shape)
    return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0)


def _depends_on(jaxpr, output, sources):
    """Whether `output` of `jaxpr` is computed from any of `sources`: a walk
    back, an equation's outputs depending on all of its inputs."""
    is_var = lambda v: not hasattr(v, "val")  # Literals hold a `val`.
    needed = {output} if is_var(output) else set()
    for equation in reversed(jaxpr.eqns):
        if any(v in needed for v in equation.outvars):
            needed.update(v for v in equation.invars if is_var(v))
    return any(v in needed for v in sources if is_var(v))


def _value_in(values, variables, variable):
    """`variable`'s value among `values` (the step's state, in the order of `variables`)."""
    for value, candidate in zip(values, variables):
        if candidate is variable:
            return value
    raise ValueError(f"Variable '{variable.path}' is not in the train step's state.")


def install(model, layer, settings):
    """Replaces the model's `train_step` with an adversarial one."""
    if keras.config.is_nnx_enabled():
        raise NotImplementedError(NNX_NOT_SUPPORTED)
    keras3.install_train_step(model, AdversarialTrainStep(layer, settings))
