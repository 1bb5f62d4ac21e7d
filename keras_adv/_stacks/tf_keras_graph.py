"""tf-keras 2 with eager execution disabled (`training_v1` models).

The model instance gets a `_make_train_function` that builds an adversarial
`K.function`, every pass in the one graph (`_GraphPasses`), so a step is one
`session.run` that updates the weights as the optimizer does or changes
nothing. History holds the clean `loss` and the compiled metrics only (what
graph-mode `fit` names its outputs after). Under MirroredStrategy each
replica's clone of the model gets the same builder (`_AdversarialClones`).
"""

import contextlib
import types

import tensorflow as tf

from keras_adv._stacks import distribution, outputs
from keras_adv._stacks.instance_patch import install_step, installed_step, uninstall_step
from keras_adv._stacks.lookup import Lookups, is_lookup, tapped_lookups
from keras_adv._stacks.passes import (
    PENALTY_ACROSS_REPLICAS, AdversarialStep, Pass, checked_lookup_gradients, no_lookup_gradient_error, planned_step,
)
from keras_adv._stacks.tf_keras import scaled_loss, unscaled_gradients
from keras_adv._stacks.tf_keras_weights import substituted_weights
from keras_adv._stacks.tf_rows import add_gradients
from keras_adv._stacks.tf_tape import TensorFlowPasses, noise, read_unperturbed

__all__ = ["install", "uninstall", "is_installed", "is_compiled", "AdversarialTrainFunction", "noise"]

_MULTI_WORKER_ERROR = (
    "With eager execution disabled, keras_adv supports MirroredStrategy (one "
    "machine) but not MultiWorkerMirroredStrategy, whose v1 training loop it is "
    "not tested with. Train several machines with eager execution (the tf-keras "
    "default), where keras_adv supports MultiWorkerMirroredStrategy."
)


_WARM_UP_WITH_UPDATES = (
    "`start_step` with eager execution disabled runs the perturbed passes "
    "during the warm-up too (weighted 0), and this model's layers update "
    "their state on every pass (batch normalization), so the warm-up "
    "would not be plain. Train eagerly (the tf-keras default), or "
    "start_step=0."
)


@contextlib.contextmanager
def _endpoints_reading(model, outputs):
    """Points the compiled loss at `outputs` while it is built again, its
    per-output loss metrics silenced (they track the clean pass)."""
    endpoints = model._training_endpoints
    saved = [(e._output, e.output_loss_metric) for e in endpoints]
    try:
        for endpoint, output in zip(endpoints, outputs):
            endpoint._output = output
            endpoint.output_loss_metric = lambda value: None
        yield
    finally:
        for endpoint, (output, metric) in zip(endpoints, saved):
            endpoint._output = output
            endpoint.output_loss_metric = metric


class _CallAdditions:
    """What one more call of the model adds to its layers (losses, batch-norm
    updates, nodes): made before the call, `take()` takes it back off after
    it, so the model holds what it held before; inside `losses_of_the_call()`
    each layer holds its unconditional losses and the call's."""

    def __init__(self, model):
        self.layers = list(model._flatten_layers(include_self=True))
        self.before = [(list(layer._losses), list(layer._updates)) for layer in self.layers]
        # Taken off too: `layer.output` still names the model's own node.
        self.nodes = [(list(layer._inbound_nodes), list(layer._outbound_nodes)) for layer in self.layers]
        self.added_losses = []
        self.updates = []

    def take(self):
        for layer, (losses, updates), (inbound, outbound) in zip(self.layers, self.before, self.nodes):
            self.added_losses.append(layer._losses[len(losses):])
            self.updates += layer._updates[len(updates):]
            layer._losses[:] = losses
            layer._updates[:] = updates
            layer._inbound_nodes[:] = inbound
            layer._outbound_nodes[:] = outbound

    @contextlib.contextmanager
    def losses_of_the_call(self):
        try:
            for layer, (losses, _), added in zip(self.layers, self.before, self.added_losses):
                unconditional = [l for l in losses if getattr(l, "_unconditional_loss", False)]
                layer._losses[:] = unconditional + added
            yield
        finally:
            for layer, (losses, _) in zip(self.layers, self.before):
                layer._losses[:] = losses


def _graph_lookups(layer, loss):
    """The lookups of `layer` in the model's own graph that `loss` depends on,
    and the gradient of `loss` w.r.t. each."""
    calls = [(tf.nest.flatten(node.input_tensors)[0], tf.nest.flatten(node.output_tensors)[0])
             for node in layer._inbound_nodes]
    calls = [(ids, outputs) for ids, outputs in calls if is_lookup(layer, ids, outputs)]
    gradients = tf.gradients(loss, [outputs for _, outputs in calls]) if calls else []
    reached = [(ids, outputs, g) for (ids, outputs), g in zip(calls, gradients) if g is not None]
    return Lookups([r[0] for r in reached], [r[1] for r in reached]), [r[2] for r in reached]


def _called_again(model, perturbed_updates):
    """Calls the model once more (inside whatever taps or substitutes its
    reads): `(outputs, compiled loss)`; its state updates join `perturbed_updates`."""
    additions = _CallAdditions(model)
    called = model(model.inputs)
    outputs = tf.nest.flatten(called)
    additions.take()
    perturbed_updates.extend(additions.updates)
    with _endpoints_reading(model, outputs), additions.losses_of_the_call():
        return called, model._prepare_total_loss([getattr(o, "_keras_mask", None) for o in outputs])


def _held_gradients(gradients, weights):
    """A loss whose gradient w.r.t. each of `weights` is its `gradients`
    (held constant), exactly: `sum(g * w)`, over the rows of a sparse one."""
    terms = []
    for gradient, weight in zip(gradients, weights):
        if isinstance(gradient, tf.IndexedSlices):
            rows = tf.gather(weight, gradient.indices)
            terms.append(tf.reduce_sum(tf.stop_gradient(gradient.values) * rows))
        elif gradient is not None:
            terms.append(tf.reduce_sum(tf.stop_gradient(gradient) * weight))
    return tf.add_n(terms)


def _weighted(gradient, weight):
    """`gradient` (maybe sparse, or None) times the scalar `weight`."""
    if gradient is None:
        return None
    if isinstance(gradient, tf.IndexedSlices):
        values = gradient.values * tf.cast(weight, gradient.values.dtype)
        return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)
    return gradient * tf.cast(weight, gradient.dtype)


class AdversarialTrainFunction(AdversarialStep):
    """Builds the adversarial train function of a `training_v1` model (its
    `_make_train_function`, following tf-keras's own)."""

    __name__ = "_make_train_function"

    def __call__(self, model):
        # What training_v1 builds with (the public one lacks `symbolic_learning_phase`).
        from tf_keras.src import backend

        has_recompiled = model._recompile_weights_loss_and_weighted_metrics()
        model._check_trainable_weights_consistency()
        if getattr(model, "train_function", None) is not None and not has_recompiled:
            return
        current_trainable_state = model._get_trainable_state()
        model._set_trainable_state(model._compiled_trainable_state)
        inputs = model._feed_inputs + model._feed_targets + model._feed_sample_weights
        if not isinstance(backend.symbolic_learning_phase(), int):
            inputs += [backend.symbolic_learning_phase()]
        with backend.get_graph().as_default():
            with backend.name_scope("training"):
                passes = _GraphPasses(self, model)
                outcome, _ = planned_step(self, passes)
                weights = model._collected_trainable_weights
                # The step reports the clean loss, read before the update writes
                # the weights (FreeLB from a random start does not order them).
                with tf.control_dependencies([model.total_loss]):
                    updates = model.optimizer.get_updates(
                        params=weights, loss=_held_gradients(outcome.gradients, weights)
                    )
                updates += model.get_updates_for(None)
                updates += model.get_updates_for(model.inputs)
                # As in eager mode, every pass keeps its batch-norm updates.
                updates += passes.perturbed_updates
            metrics = model._get_training_eval_metrics()
            metrics_tensors = [m._call_result for m in metrics if hasattr(m, "_call_result")]
        with backend.name_scope("training"):
            model.train_function = backend.function(
                inputs,
                [model.total_loss] + metrics_tensors,
                updates=updates,
                name="train_function",
                **model._function_kwargs,
            )
        model._set_trainable_state(current_trainable_state)


class _GraphPasses(TensorFlowPasses):
    """The plans' adapter in a TF1 graph, built once: the clean pass is the
    model's own graph (`total_loss`), the others call the model again, and
    the optimizer's `get_updates` gets a loss whose gradient is the plan's.

    Graph mode's differences, here once: a TF1 graph builds no model call
    inside a `tf.cond`, so the warm-up runs both steps' passes and weighs one
    of them 0 (`cond`); and per example, one lookup per pass.
    """

    def __init__(self, step, model):
        self.step, self.model, self.layer, self.inputs = step, model, step.layer, None
        self.iterations = model.optimizer.iterations
        self.perturbed_updates = []
        self.weights = model._collected_trainable_weights
        self._reads = {}
        self._clean_gradients = None
        self.lookups = self.lookup_gradients = None  # AWP and R-Drop perturb no embedding.
        if self.layer is not None:
            self.lookups, self.lookup_gradients = _graph_lookups(self.layer, model.total_loss)
            if not self.lookups.outputs:
                raise no_lookup_gradient_error(self.layer)
            if step.settings.per_example and len(self.lookups.ids) > 1:
                # Each perturbed lookup takes its part of an example's row by call
                # order, and the model's own nodes need not come in that order.
                raise NotImplementedError(
                    f"With eager execution disabled, `per_example=True` supports one "
                    f"lookup of embedding layer '{self.layer.name}' per pass; this model "
                    f"looks up {len(self.lookups.ids)} times. Train it eagerly (the tf-keras "
                    f"default), or with per_example=False."
                )

    def _gradients(self, loss, sources=None):
        """The gradients of `loss` w.r.t. `sources` (the trainable weights), as
        the optimizer takes them (its loss scaling included)."""
        optimizer = self.model.optimizer
        return unscaled_gradients(optimizer, tf.gradients(scaled_loss(optimizer, loss), sources or self.weights))

    def _outputs(self):
        outputs = self.model.outputs
        return outputs[0] if len(outputs) == 1 else outputs

    def run(self, perturbation_at=None, *, weights=False, lookup_gradients=False, scale=None, clean=False,
            reference=None, shifted=None):
        if clean and perturbation_at is None and reference is None and not shifted:  # The model's own graph.
            loss = self.model.total_loss
            if weights and scale is None and self._clean_gradients is None:
                self._clean_gradients = self._gradients(loss)
            gradients = (self._clean_gradients if scale is None else self._gradients(loss * scale)) if weights else None
            return Pass(loss, gradients, self.lookups, self.lookup_gradients, self._outputs())

        def add_perturbation(index, ids, outputs):
            return outputs + tf.cast(perturbation_at(index, ids, outputs), outputs.dtype)

        # The update differentiates this pass at the perturbed weights: the
        # perturbation, built from gradients, is a constant to it.
        values = {i: self._reads[i] + tf.stop_gradient(tf.cast(r, self._reads[i].dtype))
                  for i, r in (shifted or {}).items()}
        substitutes = [(self.weights[i], value) for i, value in values.items()]
        with substituted_weights(self.model, substitutes), \
                tapped_lookups(self.layer, add_perturbation if perturbation_at else (lambda i, ids, o: o)) as lookups:
            called, loss = _called_again(self.model, self.perturbed_updates)
        if reference is not None:
            loss = self.divergence(reference, called)
        # A read of a variable that the substitution did not reach.
        selected = [self.weights[i] for i in values]
        unreached_reads = tf.gradients(loss, selected, stop_gradients=list(self._reads.values()))
        for variable, unreached in zip(selected, unreached_reads):
            if unreached is not None:
                raise NotImplementedError(read_unperturbed(variable))
        gradients = None
        if weights:
            sources = [values.get(i, w) for i, w in enumerate(self.weights)]
            gradients = self._gradients(loss if scale is None else loss * scale, sources)
        lookup_grads = None
        if lookup_gradients:
            grads = tf.gradients(loss, lookups.outputs)
            lookup_grads = checked_lookup_gradients(self.layer, lookups, grads, dense=tf.convert_to_tensor)
        return Pass(loss, gradients, lookups, lookup_grads, called)

    def differentiate(self, objective):
        def forward(clean=False, lookup_gradients=False):
            # A pass's gradients are graph tensors: the update's gradient runs
            # back through them (the penalty's second order).
            differentiated = self.run(clean=clean, lookup_gradients=lookup_gradients)
            return differentiated.loss, differentiated

        total, aux = objective(forward)
        return self._gradients(total), aux

    @staticmethod
    def scale_loss(term, like):
        return tf.cast(term, like.dtype)  # `_gradients` scales the whole loss.

    def divergence(self, reference, called):
        # Divided as the compiled loss is: the replicas' gradients are summed.
        return outputs.divergence(self.model, self.step.settings.method, reference, called) / self.replicas

    def cond(self, start_step, adversarial, plain):
        adversary, plainly = adversarial(), plain()
        if self.perturbed_updates:
            raise NotImplementedError(_WARM_UP_WITH_UPDATES)
        on = tf.greater_equal(self.iterations, start_step)
        weight = tf.cast(on, tf.float32)
        gradients = [add_gradients(_weighted(a, weight), _weighted(p, 1 - weight))
                     for a, p in zip(adversary.gradients, plainly.gradients)]
        return adversary._replace(gradients=gradients, term=adversary.term * tf.cast(weight, adversary.term.dtype)), on

    def weight_values(self, indices):
        for i in indices:
            self._reads.setdefault(i, tf.convert_to_tensor(self.weights[i]))
        return [self._reads[i] for i in indices]


class _AdversarialClones(dict):
    """The model's cache of its replicas' clones (`_distributed_model_cache`,
    key: the mode): each clone stored gets the adversarial builder."""

    def __init__(self, model, builder, cached=()):
        super().__init__(cached)
        self.strategy = model._distribution_strategy
        self.builder = builder

    def __setitem__(self, key, distributed_model):
        from tf_keras.src.engine import training_v1

        for clone in self.strategy.experimental_local_results(distributed_model):
            install_step(clone, "_make_train_function", self.builder, training_v1.Model._make_train_function)
        super().__setitem__(key, distributed_model)


def _distributed_clones_trained_adversarially(select_training_loop, builder):
    """Wraps `model._select_training_loop`: before a distributed `fit` picks
    its loop, the model's clone cache is one that gives each replica's clone
    the adversarial builder (`compile` makes a new plain cache)."""

    def select(model, inputs):
        strategy = model._distribution_strategy
        if strategy is not None:
            distribution.check_strategy(strategy, multi_worker=False, error=_MULTI_WORKER_ERROR)
            settings = builder.settings
            if settings.method.plan == "penalized" and not settings.per_example \
                    and strategy.num_replicas_in_sync > 1:
                # Said before tf-keras builds the replicas' functions, on threads
                # that an error inside would leave in the middle of their graphs.
                raise NotImplementedError(PENALTY_ACROSS_REPLICAS)
            if not isinstance(model._distributed_model_cache, _AdversarialClones):
                # Clones built before, plainly, are built again.
                model._distributed_model_cache = _AdversarialClones(model, builder)
                model._distributed_function_cache = {}
        return select_training_loop(model, inputs)

    return select


def is_compiled(model):
    return bool(getattr(model, "_is_compiled", False)) and model.optimizer is not None


def is_installed(model):
    return installed_step(model, "_make_train_function", AdversarialTrainFunction) is not None


def install(model, layer, settings):
    """Gives the model an adversarial train-function builder."""
    if model._distribution_strategy is not None:
        distribution.check_strategy(model._distribution_strategy, multi_worker=False, error=_MULTI_WORKER_ERROR)
    if getattr(model.optimizer, "get_updates", None) is None:
        raise TypeError(
            f"With eager execution disabled, tf-keras needs a legacy optimizer "
            f"(with `get_updates`), got {type(model.optimizer).__name__}. Compile "
            f"with e.g. `tf_keras.optimizers.legacy.Adam()` or `'adam'`."
        )
    from tf_keras.src.engine import training_v1

    builder = AdversarialTrainFunction(layer, settings)
    install_step(model, "_make_train_function", builder, training_v1.Model._make_train_function)
    model._select_training_loop = types.MethodType(
        _distributed_clones_trained_adversarially(type(model)._select_training_loop, builder), model
    )
    # Clones of an earlier setting are built again with this one.
    model._distributed_model_cache = {}
    model._distributed_function_cache = {}


def uninstall(model):
    uninstall_step(model, "_make_train_function")
    del model._select_training_loop
    model._distributed_model_cache = {}  # Plain clones from now on.
    model._distributed_function_cache = {}
