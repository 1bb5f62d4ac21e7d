"""tf-keras 2 with eager execution disabled (`training_v1` models).

`fit` runs one `K.function` per step, built by `model._make_train_function`;
the model instance gets a builder that makes an adversarial one. All passes
live in the one graph:

    clean forward (the model's `total_loss`) -> gradient at its lookups
    -> forward again with the perturbation added at the lookups -> ... (PGD)
    -> optimizer updates

The clean pass is the model's own graph: its lookups are the embedding
layer's nodes there. The perturbed passes call the model again, with the
lookups tapped (`lookup.py`); nothing writes the matrix, so a step is one
`session.run` that either updates the weights as the optimizer does or,
when it fails, changes nothing that keras_adv wrote. AWP's passes call the
model on perturbed copies of its weights (`tf_keras_weights.py`), which
nothing writes either. The optimizer's own `get_updates` computes the weight
gradients of clean + adversarial loss (or the adversarial loss only); AWP,
which takes every clean weight gradient for its ascent anyway, hands it a
term with that gradient instead of the clean loss, so that the clean
backward runs once.
`fit`'s History holds the clean `loss` and the compiled metrics; tf-keras's
graph-mode loop names its outputs after the compiled metrics, so the
adversarial loss is not among them.

Under MirroredStrategy, tf-keras's graph-mode `fit` builds each replica's
train function on a clone of the model that shares its layers, and keeps
the clones in the model's `_distributed_model_cache`: the model gets a cache
that gives each clone, as it is stored, the same adversarial builder. Each
replica's passes then build the perturbation from the global batch's
gradient, as in eager mode (`tf_rows.py` gathers the touched rows across
replicas).
"""

import contextlib
import types

import tensorflow as tf

from keras_adv._stacks import distribution
from keras_adv._stacks.instance_patch import install_step, installed_step, uninstall_step
from keras_adv._stacks.outputs import divergence
from keras_adv._stacks.lookup import Lookups, is_lookup, tapped_lookups
from keras_adv._stacks.passes import (
    PENALTY_ACROSS_REPLICAS, AdversarialStep, Pass, ascent, attack, epsilon_now, no_lookup_gradient_error,
    penalty_term, selected_weights, virtual_adversarial, weight_attack,
)
from keras_adv._stacks.tf_keras_weights import substituted_weights
from keras_adv._stacks.tf_rows import padding_masks, perturbation_space, random_start, sum_across_replicas
from keras_adv._stacks.tf_keras import scaled_loss, unscaled_gradients
from keras_adv._stacks.tf_tape import dense_gradients, global_batch_noise, read_unperturbed, vat_noise
from keras_adv.methods import AWP, VAT, FreeLB

__all__ = ["install", "uninstall", "is_installed", "is_compiled", "AdversarialTrainFunction", "vat_noise"]

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


def _replicas():
    replica = tf.distribute.get_replica_context()
    return 1 if replica is None else replica.num_replicas_in_sync


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


def _called_again(model, perturbed_updates, divergence_of=None):
    """Calls the model once more (a perturbed pass, inside whatever taps or
    substitutes its reads) and returns that call's compiled loss or, given
    `divergence_of(outputs)`, VAT's divergence. Its updates of non-trainable
    state join `perturbed_updates`."""
    additions = _CallAdditions(model)
    called = model(model.inputs)
    outputs = tf.nest.flatten(called)
    additions.take()
    perturbed_updates.extend(additions.updates)
    if divergence_of is not None:
        # Divided as the compiled loss is: the replicas' gradients are summed.
        return divergence_of(called) / _replicas()
    with _endpoints_reading(model, outputs), additions.losses_of_the_call():
        return model._prepare_total_loss([getattr(o, "_keras_mask", None) for o in outputs])


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
                loss, perturbed_updates = self._loss(model)
                # The clean pass reports the step's loss, reading the weights
                # that the update writes; where the update does not need it
                # (FreeLB from a random start), nothing else orders the two.
                with tf.control_dependencies([model.total_loss]):
                    updates = model.optimizer.get_updates(
                        params=model._collected_trainable_weights, loss=loss
                    )
                updates += model.get_updates_for(None)
                updates += model.get_updates_for(model.inputs)
                # As in eager mode, every pass keeps its updates of
                # non-trainable state (batch-norm statistics).
                updates += perturbed_updates
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

    def _loss(self, model):
        """The loss to update from (clean + adversarial, or adversarial only),
        and the perturbed passes' updates of non-trainable state."""
        clean_loss, iterations = model.total_loss, model.optimizer.iterations
        if isinstance(self.settings.method, AWP):
            perturbed_updates = []
            adversarial_loss, clean_term = self._weight_attack(model, clean_loss, perturbed_updates)
            return self._update_loss(clean_term, adversarial_loss, perturbed_updates, iterations), perturbed_updates
        lookups, lookup_gradients = _graph_lookups(self.layer, clean_loss)
        if not lookups.outputs:
            raise no_lookup_gradient_error(self.layer)
        clean = Pass(clean_loss, [], lookups, lookup_gradients)
        settings = self.settings
        if settings.per_example and len(lookups.ids) > 1:
            # Each perturbed lookup takes its part of an example's row by call
            # order, and the model's own nodes need not come in that order.
            raise NotImplementedError(
                f"With eager execution disabled, `per_example=True` supports one "
                f"lookup of embedding layer '{self.layer.name}' per pass; this model "
                f"looks up {len(lookups.ids)} times. Train it eagerly (the tf-keras "
                f"default), or with per_example=False."
            )
        masks = padding_masks(self.layer, lookups.ids) if settings.per_example else None
        space = perturbation_space(settings.per_example, lookups, self.layer, masks)
        iterations = model.optimizer.iterations
        if settings.method.steps == 0 and not settings.per_example and _replicas() > 1:
            raise NotImplementedError(PENALTY_ACROSS_REPLICAS)
        if settings.method.steps == 0:
            # The gradient penalty: the optimizer's `tf.gradients` of this loss
            # runs back through the lookups' gradient (a second-order one).
            penalty = penalty_term(settings, space, space.rows(lookups.ids, lookup_gradients))
            if settings.start_step:
                penalty *= tf.cast(tf.greater_equal(iterations, settings.start_step), penalty.dtype)
            return clean_loss + tf.cast(penalty, clean_loss.dtype), []

        perturbed_updates = []

        def perturbed_pass(perturbation, last, divergence_from=None):
            """A perturbed call of the model: its compiled loss or, given the
            clean outputs, VAT's divergence from them."""
            def add_perturbation(index, ids, outputs):
                return outputs + tf.cast(space.at(index, ids, perturbation), outputs.dtype)

            divergence_of = None
            if divergence_from is not None:
                def divergence_of(called):
                    return divergence(model, settings.method, divergence_from, called)

            with tapped_lookups(self.layer, add_perturbation) as perturbed:
                loss = _called_again(model, perturbed_updates, divergence_of)
            gradients = None if last else tf.gradients(loss, perturbed.outputs)
            return Pass(loss, [], perturbed, gradients)

        epsilon = epsilon_now(settings, iterations)
        if epsilon is not None:
            epsilon = tf.cast(epsilon, tf.float32)
        if isinstance(settings.method, VAT):
            # VAT: the divergence from the model's own (clean) outputs, probed
            # by power iteration; the loss gains `weight` times it at the end.
            own = model.outputs[0] if len(model.outputs) == 1 else model.outputs
            reference = tf.nest.map_structure(tf.stop_gradient, own)
            noises = global_batch_noise(self.seed, iterations, lookups.outputs)
            last = virtual_adversarial(
                self, space, noises,
                lambda perturbation, last: perturbed_pass(perturbation, last, divergence_from=reference),
                epsilon,
            )
            term = tf.cast(settings.method.weight * last.loss, clean_loss.dtype)
            if settings.start_step:
                if perturbed_updates:
                    raise NotImplementedError(_WARM_UP_WITH_UPDATES)
                term *= tf.cast(tf.greater_equal(iterations, settings.start_step), term.dtype)
            return clean_loss + term, perturbed_updates
        if isinstance(settings.method, FreeLB):
            # FreeLB's K passes, the loss their mean: the first is the clean
            # pass, or with a random start one more rebuilt call of the model.
            method, start, first = settings.method, None, clean
            if method.init_magnitude:
                seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(iterations, tf.int64)])
                starts = [
                    random_start(method, ids, mask, self.layer.embeddings.shape[1], seed + [index, 0])
                    for index, (ids, mask) in enumerate(zip(lookups.ids, masks))
                ]
                start = space.rows(lookups.ids, starts)
                first = perturbed_pass(start, method.steps == 1)
            passes = ascent(self, space, first, perturbed_pass, epsilon, start=start)
            adversarial_loss = tf.add_n([p.loss for p in passes]) / len(passes)
        else:
            adversarial_loss = attack(self, space, clean, perturbed_pass, epsilon).loss
        return self._update_loss(clean_loss, adversarial_loss, perturbed_updates, iterations), perturbed_updates

    def _weight_attack(self, model, clean_loss, perturbed_updates):
        """AWP's passes: the model called again on perturbed copies of the
        selected weights (`tf_keras_weights.py`).

        Returns:
            `(the last pass's loss, the clean term)`: the clean term is a loss
            whose gradient is the clean pass's (`_held_gradients`), so that
            the optimizer does not run the clean backward a second time.
        """
        weights, optimizer = model._collected_trainable_weights, model.optimizer
        indices = selected_weights(self.settings.method, weights, model.name)
        selected = [weights[i] for i in indices]
        originals = [tf.convert_to_tensor(w) for w in selected]

        def perturbed_pass(perturbations):
            # The update differentiates this pass at the perturbed weights:
            # the perturbation, built from gradients, is a constant to it.
            values = [w + tf.stop_gradient(tf.cast(r, w.dtype)) for w, r in zip(originals, perturbations)]
            substitutes = list(zip(selected, values))
            with substituted_weights(model, substitutes):
                loss = _called_again(model, perturbed_updates)
            # A read of a variable that the substitution did not reach.
            for variable, unreached in zip(selected, tf.gradients(loss, selected, stop_gradients=originals)):
                if unreached is not None:
                    raise NotImplementedError(read_unperturbed(variable))
            # All weights' slots, the selected ones filled: what `weight_attack` indexes.
            gradients = [None] * len(weights)
            for i, gradient in zip(indices, tf.gradients(loss, values)):
                gradients[i] = gradient
            return Pass(loss, gradients, None, None)

        # Every weight's clean gradient, taken as the optimizer takes it (loss
        # scaling included): it starts the ascent, and the update reads it.
        clean_gradients = unscaled_gradients(optimizer, tf.gradients(scaled_loss(optimizer, clean_loss), weights))
        epsilon = epsilon_now(self.settings, optimizer.iterations)
        if epsilon is not None:
            epsilon = tf.cast(epsilon, tf.float32)
        last, _ = weight_attack(
            self, Pass(clean_loss, clean_gradients, None, None), indices, originals, perturbed_pass, add=None,
            dense=lambda gradients: dense_gradients(gradients, selected), epsilon=epsilon,
            reduce=sum_across_replicas if _replicas() > 1 else None,
        )
        return last.loss, _held_gradients(clean_gradients, weights)

    def _update_loss(self, clean_loss, adversarial_loss, perturbed_updates, iterations):
        """The loss the optimizer differentiates: clean + adversarial, or the
        adversarial alone (FreeLB's, the mean of its passes, always).
        `clean_loss` is any loss with the clean pass's gradient."""
        settings = self.settings
        replaces_clean = settings.objective == "adversarial" or isinstance(settings.method, FreeLB)
        if not settings.start_step:
            return adversarial_loss if replaces_clean else clean_loss + adversarial_loss
        # Warm-up steps weigh the perturbed passes 0 (a TF1 graph builds no
        # model call inside a cond), so they update from the clean loss
        # exactly, while the passes still run; their updates of layer state
        # would apply, so such models are refused.
        if perturbed_updates:
            raise NotImplementedError(_WARM_UP_WITH_UPDATES)
        on = tf.cast(tf.greater_equal(iterations, settings.start_step), clean_loss.dtype)
        if replaces_clean:
            return on * adversarial_loss + (1 - on) * clean_loss
        return clean_loss + on * adversarial_loss


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
            if settings.method.steps == 0 and not settings.per_example and strategy.num_replicas_in_sync > 1:
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
