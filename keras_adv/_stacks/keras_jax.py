"""Keras 3 on the JAX backend.

The model instance gets an adversarial `train_step(state, data) -> (logs,
state)`, a pure function that Keras jit-compiles as it compiles its own
(`keras/src/backend/jax/trainer.py`), under `keras.distribution` too: every
array in it is global, so the touched rows and the norms are those of the
global batch, and the compiler adds the collectives.

JAX differentiates functions of their arguments, not intermediate tensors;
so each pass adds a zero array `delta` (one per lookup, of the lookup
output's shape) at the lookups, and the gradient w.r.t. `delta` is the
gradient w.r.t. the lookups' outputs. The shapes come from tracing the model
once with `jax.eval_shape` (no computation). The passes are those of
`passes.py`; the matrix is never written.
"""

import jax
import keras
from keras import ops

from keras_adv._stacks import keras3, outputs
from keras_adv._stacks.instance_patch import installed_step
from keras_adv._stacks.lookup import Lookups, tapped_lookups
from keras_adv._stacks.ops_rows import padding_masks, perturbation_space, random_start
from keras_adv._stacks.passes import (
    AdversarialStep, Pass, attack, epsilon_now, free_lb, no_lookup_error,
    no_lookup_gradient_error, penalty_term, selected_weights, update_gradients, virtual_adversarial,
    weight_attack,
)
from keras_adv.methods import AWP, VAT, FreeLB

__all__ = ["install", "uninstall", "is_installed", "is_compiled", "AdversarialTrainStep", "vat_noise"]

is_compiled = keras3.is_compiled

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
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        keras3.check_embedding(self.layer)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        settings, layer = self.settings, self.layer
        optimizer = model.optimizer
        # Under `gradient_accumulation_steps` it is computed from the batch
        # counter, no variable of the state; read outside the state it found
        # the counter emptied (Keras's JAX `fit` purges the variables while it
        # runs): "'NoneType' object is not callable".
        iterations = keras3.update_count(optimizer, optimizer_variables)
        if layer is not None:  # AWP perturbs weights, not an embedding.
            matrix = _value_in(
                list(trainable) + list(non_trainable),
                model.trainable_variables + model.non_trainable_variables,
                layer.embeddings,
            )

        def run_pass(trainable, deltas, non_trainable, perturbation_at, reference=None):
            """One pass, a function of the weights and of what is added at the
            lookups: `(scaled loss, (loss, y_pred, non_trainable, metrics,
            (lookup ids, lookup outputs, what was added at them)))`; with a
            `reference` (the clean outputs), its loss is VAT's divergence
            from them."""

            added = []  # What each lookup got added (FreeLB's random start).

            def transform(index, ids, outputs):
                if perturbation_at is not None:
                    added.append(perturbation_at(index, ids))
                    outputs = outputs + ops.cast(added[-1], outputs.dtype)
                return outputs if deltas is None else outputs + deltas[index]

            with tapped_lookups(layer, transform) as lookups:
                if reference is None:
                    loss, (unscaled, y_pred, non_trainable, metrics) = model.compute_loss_and_updates(
                        trainable, non_trainable, metrics_variables, x, y, sample_weight,
                        training=True, optimizer_variables=optimizer_variables,
                    )
                else:
                    y_pred, non_trainable = model.stateless_call(
                        trainable, non_trainable, x, training=True
                    )
                    unscaled = outputs.divergence(model, settings.method, reference, y_pred)
                    loss, metrics = scaled(unscaled), metrics_variables
            if not lookups.outputs:
                raise no_lookup_error(layer)
            lookups_aux = (lookups.ids, lookups.outputs, added)
            return loss, (unscaled, y_pred, non_trainable, metrics, lookups_aux)

        if layer is not None:
            shapes = _lookup_output_shapes(layer, run_pass, trainable, non_trainable)

        def scaled(loss):
            """`loss` scaled by the optimizer (mixed precision), as Keras scales its own."""
            mapping = list(zip(optimizer.variables, optimizer_variables))
            with keras.StatelessScope(state_mapping=mapping):
                return optimizer.scale_loss(loss)

        def weight_pass(weights, non_trainable):
            """A pass on `weights` (the trainable ones, some perturbed), and
            its gradients w.r.t. them: `(Pass, metrics, non_trainable)`."""
            loss_of = lambda weights: model.compute_loss_and_updates(
                weights, non_trainable, metrics_variables, x, y, sample_weight,
                training=True, optimizer_variables=optimizer_variables,
            )
            (_, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(weights)
            unscaled, y_pred, non_trainable, metrics = aux
            return Pass(unscaled, grads, None, None, y_pred), metrics, non_trainable

        def differentiated_pass(non_trainable, perturbation_at, weights, lookup_gradients, scale=1,
                                reference=None):
            """A pass and its gradients w.r.t. the weights (if `weights`) and
            the lookups' outputs (if `lookup_gradients`), of its loss times
            `scale`: `(Pass, metrics, non_trainable, what was added at the
            lookups)`, the `Pass`'s loss unscaled."""
            deltas = [ops.zeros(shape.shape, shape.dtype) for shape in shapes]
            argnums = (0,) * weights + (1,) * lookup_gradients

            def scaled_pass(*args):
                loss, aux = run_pass(*args)
                return loss * scale, aux

            (_, aux), grads = jax.value_and_grad(scaled_pass, argnums=argnums, has_aux=True)(
                trainable, deltas, non_trainable, perturbation_at, reference
            )
            unscaled, y_pred, non_trainable, metrics, (ids, outputs, added) = aux
            lookups = Lookups()
            lookups.ids, lookups.outputs = list(ids), list(outputs)
            the_pass = Pass(
                unscaled, grads[0] if weights else None, lookups,
                grads[-1] if lookup_gradients else None, y_pred,
            )
            return the_pass, metrics, non_trainable, added

        def adversarial_step(non_trainable):
            # Under "adversarial" the update does not use the clean weight
            # gradients; the compiler drops what only they would need.
            clean, metrics, non_trainable, _ = differentiated_pass(
                non_trainable, None, weights=settings.objective == "sum", lookup_gradients=True
            )
            ids = clean.lookups.ids
            masks = padding_masks(layer, ids, x) if settings.per_example else None
            space = perturbation_space(settings.per_example, ids, clean.lookups.outputs, matrix, masks)

            def perturbed_pass(perturbation, last):
                # The perturbed passes keep their non-trainable updates (as
                # on TensorFlow), but not their metric updates.
                nonlocal non_trainable
                result, _, non_trainable, _ = differentiated_pass(
                    non_trainable, lambda index, ids: space.at(index, ids, perturbation),
                    weights=last, lookup_gradients=not last,
                )
                return result

            epsilon = epsilon_now(settings, iterations)
            if epsilon is not None:
                epsilon = ops.cast(epsilon, "float32")
            last = attack(self, space, clean, perturbed_pass, epsilon)
            grads = update_gradients(settings.objective, clean.gradients, last.gradients, ops.add)
            return grads, last.loss, clean.loss, clean.predictions, non_trainable, metrics

        def free_lb_step(non_trainable):
            # FreeLB: K passes from a random start, every one's weight
            # gradients (of L / K) summed; the first is the clean pass where
            # the start is 0.
            method = settings.method
            steps = method.steps

            def random_start_at(index, ids):
                shape = tuple(ids.shape) + (layer.embeddings.shape[1],)
                noise = jax.random.uniform(_key(self.seed, iterations, index), shape, minval=-1.0, maxval=1.0)
                return random_start(method, noise, padding_masks(layer, [ids], x)[0])

            metrics = None

            def first_pass():
                nonlocal metrics, non_trainable
                first, metrics, non_trainable, starts = differentiated_pass(
                    non_trainable, random_start_at if method.init_magnitude else None,
                    weights=True, lookup_gradients=steps > 1, scale=1 / steps,
                )
                return first, starts

            def space_of(first):
                ids = first.lookups.ids
                return perturbation_space(
                    True, ids, first.lookups.outputs, matrix, padding_masks(layer, ids, x)
                )

            def perturbed_pass(space, perturbation, last):
                nonlocal non_trainable
                result, _, non_trainable, _ = differentiated_pass(
                    non_trainable, lambda index, ids: space.at(index, ids, perturbation),
                    weights=True, lookup_gradients=not last, scale=1 / steps,
                )
                return result

            epsilon = epsilon_now(settings, iterations)
            if epsilon is not None:
                epsilon = ops.cast(epsilon, "float32")
            first, grads, loss = free_lb(self, first_pass, space_of, perturbed_pass, ops.add, epsilon)
            return grads, loss, first.loss, first.predictions, non_trainable, metrics

        def penalized_step(non_trainable):
            # One pass; the penalty on its lookups' gradient joins the loss,
            # whose gradient then differentiates that gradient again.
            deltas = [ops.zeros(shape.shape, shape.dtype) for shape in shapes]

            def unscaled_loss(deltas, trainable):
                loss, aux = run_pass(trainable, deltas, non_trainable, None)
                return aux[0], (loss, aux)

            def penalized_loss(trainable):
                (_, (loss, aux)), lookup_grads = jax.value_and_grad(unscaled_loss, has_aux=True)(
                    deltas, trainable
                )
                unscaled, y_pred, updated, metrics, (ids, outputs, _) = aux
                masks = padding_masks(layer, ids, x) if settings.per_example else None
                space = perturbation_space(settings.per_example, ids, outputs, matrix, masks)
                penalty = penalty_term(settings, space, space.rows(ids, lookup_grads))
                total = loss + scaled(ops.cast(penalty, loss.dtype))
                return total, (penalty, unscaled, y_pred, updated, metrics)

            (_, aux), grads = jax.value_and_grad(penalized_loss, has_aux=True)(trainable)
            penalty, unscaled, y_pred, non_trainable, metrics = aux
            return grads, penalty, unscaled, y_pred, non_trainable, metrics

        def weight_step(non_trainable):
            # AWP: the perturbed passes run on perturbed copies of the
            # selected weights (the step's state is its arguments' values).
            indices = selected_weights(settings.method, model.trainable_variables, model.name)
            clean, metrics, non_trainable = weight_pass(list(trainable), non_trainable)

            def perturbed_pass(perturbations):
                nonlocal non_trainable
                weights = list(trainable)
                for i, perturbation in zip(indices, perturbations):
                    weights[i] = weights[i] + perturbation
                result, _, non_trainable = weight_pass(weights, non_trainable)
                return result

            epsilon = epsilon_now(settings, iterations)
            if epsilon is not None:
                epsilon = ops.cast(epsilon, "float32")
            last, grads = weight_attack(
                self, clean, indices, [trainable[i] for i in indices], perturbed_pass, ops.add,
                epsilon=epsilon,
            )
            return grads, last.loss, clean.loss, clean.predictions, non_trainable, metrics

        def virtual_step(non_trainable):
            # VAT: the clean pass, the power iterations on the divergence
            # from its outputs, and the divergence at the perturbation, weighted.
            method = settings.method
            clean, metrics, non_trainable, _ = differentiated_pass(
                non_trainable, None, weights=True, lookup_gradients=False
            )
            ids = clean.lookups.ids
            space = perturbation_space(True, ids, clean.lookups.outputs, matrix, padding_masks(layer, ids, x))
            reference = jax.lax.stop_gradient(clean.predictions)

            def divergence_pass(perturbation, last):
                nonlocal non_trainable
                result, _, non_trainable, _ = differentiated_pass(
                    non_trainable, lambda index, ids: space.at(index, ids, perturbation),
                    weights=last, lookup_gradients=not last,
                    scale=method.weight if last else 1, reference=reference,
                )
                return result

            epsilon = epsilon_now(settings, iterations)
            if epsilon is not None:
                epsilon = ops.cast(epsilon, "float32")
            noises = [vat_noise(self.seed, iterations, index, tuple(output.shape))
                      for index, output in enumerate(clean.lookups.outputs)]
            last = virtual_adversarial(self, space, noises, divergence_pass, epsilon)
            grads = update_gradients("sum", clean.gradients, last.gradients, ops.add)
            return grads, last.loss, clean.loss, clean.predictions, non_trainable, metrics

        def plain_step(non_trainable):
            clean, metrics, non_trainable = weight_pass(list(trainable), non_trainable)
            no_loss = ops.zeros_like(clean.loss)
            return clean.gradients, no_loss, clean.loss, clean.predictions, non_trainable, metrics

        if settings.method.steps == 0:  # The gradient penalty: no perturbed pass.
            adversarial_step = penalized_step
        elif isinstance(settings.method, FreeLB):
            adversarial_step = free_lb_step
        elif isinstance(settings.method, AWP):
            adversarial_step = weight_step
        elif isinstance(settings.method, VAT):
            adversarial_step = virtual_step
        if settings.start_step:
            adversarial = ops.greater_equal(iterations, settings.start_step)
            outcome = jax.lax.cond(adversarial, adversarial_step, plain_step, non_trainable)
        else:
            adversarial = True
            outcome = adversarial_step(non_trainable)
        grads, adversarial_loss, clean_loss, y_pred, non_trainable, metrics_variables = outcome

        trainable, optimizer_variables = optimizer.stateless_apply(
            optimizer_variables, grads, trainable
        )
        logs, metrics_variables = self._logs(
            model, metrics_variables, clean_loss, adversarial_loss, adversarial, x, y, y_pred,
            sample_weight,
        )
        return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)

    def _logs(self, model, metrics_variables, clean_loss, adversarial_loss, adversarial, x, y,
              y_pred, sample_weight):
        """Updates the loss trackers and the compiled metrics (as Keras's
        `_update_metrics_variables`, plus the adversarial loss's mean, which a
        warm-up step does not count in)."""
        metric = keras3.adversarial_loss_metric(model)
        size = keras3.batch_size(x)
        mapping = list(zip(model.metrics_variables, metrics_variables))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            model._loss_tracker.update_state(clean_loss, sample_weight=size)
            metric.update_state(adversarial_loss, sample_weight=size * ops.cast(adversarial, "float32"))
            with metric.reporting():
                logs = model.compute_metrics(x, y, y_pred, sample_weight)
        updated = []
        for variable in model.metrics_variables:
            value = scope.get_current_value(variable)
            updated.append(variable.value if value is None else value)
        return logs, updated


def vat_noise(seed, step_count, index, shape):
    """VAT's standard normal noise for lookup `index`: a stateless function
    of `seed`, the step count and the index (the model gains no random state)."""
    return jax.random.normal(_key(seed, step_count, index), shape)


def _key(seed, step_count, index):
    """The random key of lookup `index` at a step: a function of the step's
    seed and count alone (stateless; the model gains no random state)."""
    return jax.random.fold_in(jax.random.key(seed + index), step_count)


def _lookup_output_shapes(layer, run_pass, trainable, non_trainable):
    """The shape of each lookup's output, from a trace of the clean pass.

    The trace also tells whether the loss depends on the lookups at all (the
    TensorFlow and PyTorch stacks see it as a missing gradient; here a
    gradient is never missing, only zero).

    Raises:
        ValueError: If the loss does not depend on any lookup.
    """

    def loss_and_lookups(trainable, non_trainable):
        loss, (*_, (_, outputs, _)) = run_pass(trainable, None, non_trainable, None)
        return loss, outputs

    traced, (_, shapes) = jax.make_jaxpr(loss_and_lookups, return_shape=True)(trainable, non_trainable)
    loss_var, *lookup_vars = traced.jaxpr.outvars
    if not _depends_on(traced.jaxpr, loss_var, lookup_vars):
        raise no_lookup_gradient_error(layer)
    return shapes


def _depends_on(jaxpr, output, sources):
    """Whether `output` of `jaxpr` is computed from any of `sources` (its
    variables): a walk back through the equations, counting an equation's
    outputs as depending on all of its inputs."""
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


def is_installed(model):
    return installed_step(model, "train_step", AdversarialTrainStep) is not None


def install(model, layer, settings):
    """Replaces the model's `train_step` with an adversarial one."""
    if keras.config.is_nnx_enabled():
        raise NotImplementedError(NNX_NOT_SUPPORTED)
    keras3.install_train_step(model, AdversarialTrainStep(layer, settings))


def uninstall(model):
    keras3.uninstall_train_step(model)
