"""tf-keras 2 with eager execution disabled (`training_v1` models).

`fit` runs one `K.function` per step, built by `model._make_train_function`;
the model instance gets a builder that makes an adversarial one, every pass
in the one graph (`_GraphPasses`): the clean pass is the model's own graph,
the others call the model again with its lookups tapped (`lookup.py`) or its
weights substituted (`tf_keras_weights.py`), and the optimizer's
`get_updates` is handed a loss whose gradient is the plan's. Nothing writes
a weight, so a step is one `session.run` that either updates the weights as
the optimizer does or changes nothing. History holds the clean `loss` and
the compiled metrics only (graph-mode `fit` names its outputs after them).

Under MirroredStrategy, graph-mode `fit` trains a clone of the model per
replica, kept in the model's `_distributed_model_cache`: the model gets a
cache that gives each clone, as it is stored, the same adversarial builder.
"""

import contextlib
import types

import tensorflow as tf

from keras_adv._stacks import distribution, outputs
from keras_adv._stacks.instance_patch import install_step, installed_step, uninstall_step
from keras_adv._stacks.lookup import Lookups, is_lookup, tapped_lookups
from keras_adv._stacks.passes import (
    PENALTY_ACROSS_REPLICAS, AdversarialStep, Pass, no_lookup_gradient_error, planned_step,
)
from keras_adv._stacks.tf_keras_weights import substituted_weights
from keras_adv._stacks.tf_rows import add_gradients, global_batch_draw
from keras_adv._stacks.tf_keras import scaled_loss, unscaled_gradients
from keras_adv._stacks.tf_tape import TensorFlowPasses, draw, noise, noise_seed, read_unperturbed

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


def _backend():
    # The module training_v1 builds its train function with (the public
    # `tf_keras.backend` lacks `symbolic_learning_phase`).
    from tf_keras.src import backend

    return backend


@contextlib.contextmanager
def _endpoints_reading(model, outputs):
    """Points the compiled loss at `outputs` while it is built again.

    `_prepare_total_loss` builds the loss from the endpoints' outputs; the
    per-output loss metrics it also calls are silenced, so they keep tracking
    the clean pass.
    """
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
    """What one more call of the model adds to its layers: losses (a `Loss`
    layer's `add_loss`, activity regularizers) and updates (batch-norm
    statistics), conditional on that call's tensors.

    Made before the call; `take()` after it takes what the call added back
    off the layers, so the model holds what it held before (a train function
    built from it later sees the clean pass only). Inside
    `losses_of_the_call()`, each layer holds its unconditional losses and the
    ones the call added, for the compiled loss built there.
    """

    def __init__(self, model):
        self.layers = list(model._flatten_layers(include_self=True))
        self.before = [(list(layer._losses), list(layer._updates)) for layer in self.layers]
        # The call also adds a node to each layer; taken off, so that
        # `layer.output` still names the model's own (one) node.
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
    candidates = Lookups()
    for node in layer._inbound_nodes:
        ids = tf.nest.flatten(node.input_tensors)[0]
        outputs = tf.nest.flatten(node.output_tensors)[0]
        if is_lookup(layer, ids, outputs):
            candidates.ids.append(ids)
            candidates.outputs.append(outputs)
    gradients = tf.gradients(loss, candidates.outputs) if candidates.outputs else []
    lookups = Lookups()
    for ids, outputs, gradient in zip(candidates.ids, candidates.outputs, gradients):
        if gradient is not None:
            lookups.ids.append(ids)
            lookups.outputs.append(outputs)
    return lookups, [g for g in gradients if g is not None]


def _called_again(model, perturbed_updates):
    """Calls the model once more (a perturbed pass, inside whatever taps or
    substitutes its reads): `(its outputs, its compiled loss)`. Its updates
    of non-trainable state join `perturbed_updates`."""
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
    """Builds the adversarial train function of a `training_v1` model.

    Bound to the model as `_make_train_function`; follows tf-keras's own.
    """

    __name__ = "_make_train_function"

    def __call__(self, model):
        backend = _backend()
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
                # The clean pass reports the step's loss, reading the weights
                # that the update writes; where the update does not need it
                # (FreeLB from a random start), nothing else orders the two.
                with tf.control_dependencies([model.total_loss]):
                    updates = model.optimizer.get_updates(
                        params=weights, loss=_held_gradients(outcome.gradients, weights)
                    )
                updates += model.get_updates_for(None)
                updates += model.get_updates_for(model.inputs)
                # As in eager mode, every pass keeps its updates of
                # non-trainable state (batch-norm statistics).
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
    """The plans' adapter (`passes.py`) in a TF1 graph, built once.

    The clean pass is the model's own graph (its loss is `total_loss`); the
    others call the model again (`_called_again`). Each pass's weight
    gradients are taken as the optimizer takes them (loss scaling included),
    and the optimizer's `get_updates` is handed a loss whose gradient is the
    plan's gradients (`_held_gradients`).

    Graph mode's differences, here once: a TF1 graph builds no model call
    inside a `tf.cond`, so the warm-up (`cond`) runs both the plain and the
    adversarial passes and weighs one of them 0 (refused where the perturbed
    passes update layer state); and per example, one lookup per pass.
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
        if perturbation_at is None and reference is None and not shifted:  # The model's own graph.
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
        for variable, unreached in zip(selected, tf.gradients(loss, selected, stop_gradients=list(self._reads.values()))):
            if unreached is not None:
                raise NotImplementedError(read_unperturbed(variable))
        gradients = None
        if weights:
            sources = [values.get(i, w) for i, w in enumerate(self.weights)]
            gradients = self._gradients(loss if scale is None else loss * scale, sources)
        lookup_grads = self._lookup_gradients(loss, lookups) if lookup_gradients else None
        return Pass(loss, gradients, lookups, lookup_grads, called)

    @staticmethod
    def _lookup_gradients(loss, lookups):
        return [tf.zeros_like(o) if g is None else g for o, g in zip(lookups.outputs, tf.gradients(loss, lookups.outputs))]

    def differentiate(self, objective):
        def forward(clean=False, lookup_gradients=False):
            if clean:
                loss = self.model.total_loss
                return loss, Pass(loss, None, self.lookups, self.lookup_gradients if lookup_gradients else None,
                                  self._outputs())
            with tapped_lookups(self.layer if lookup_gradients else None, lambda i, ids, o: o) as lookups:
                called, loss = _called_again(self.model, self.perturbed_updates)
            lookup_grads = self._lookup_gradients(loss, lookups) if lookup_gradients else None
            return loss, Pass(loss, None, lookups, lookup_grads, called)

        # The optimizer's gradients run back through any lookups' gradient.
        total, aux = objective(forward)
        return self._gradients(total), aux

    @staticmethod
    def scale_loss(term, like):
        return tf.cast(term, like.dtype)  # `_gradients` scales the whole loss.

    def divergence(self, reference, called):
        # Divided as the compiled loss is: the replicas' gradients are summed.
        return outputs.divergence(self.model, self.step.settings.method, reference, called) / self.replicas

    def noise(self, index, like, kind):
        seed = noise_seed(self.step.seed, self.iterations, index)
        return global_batch_draw(lambda shape: draw(kind, shape, seed), tf.shape(like))

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
