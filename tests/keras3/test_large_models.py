"""Fine-tuning large models, in miniature, on the backend of the process:
a KerasHub causal LM (LoRA and full), bfloat16, and gradient accumulation.

- A tiny random `GemmaCausalLM` (tests/large_models.py) trained with `fit`
  on dict inputs, next-token labels and a per-token sample weight: one
  per-example FGM step equals an independent route through public Keras
  APIs (a functional sub-model cut at the token embedding, differentiated by
  the backend's autodiff), with padding that reaches the loss and gets no
  perturbation; with LoRA every method trains the LoRA factors only and
  leaves every frozen weight bit-identical (NEFTune's step equals the route
  fed its own noise, zero at padding and scaled by each example's length);
  LoRA on the embedding itself is refused at the call.
- `mixed_bfloat16`: epsilon means what it means in float32 (as
  tests/mixed_precision.py checks for mixed float16).
- `gradient_accumulation_steps`: k accumulated adversarial steps are one
  update by the mean of the k steps' gradients (tests/reference.py), and
  `start_step` and an epsilon schedule count updates (`optimizer.iterations`).
"""

import keras
import numpy as np
import pytest

import keras_adv
from tests import reference
from tests.closed_form import step_noise_of
from tests.large_models import (
    Route, causal_batch, compile_sgd, gemma, per_example_fgm, to_numpy,
)
from tests.models import batch, linear_text_model, params_of, sgd
from tests.models import compile_sgd as compile_sgd_linear
from tests.testing import TestCase

LR = 0.5


def _frozen_values(model):
    return [to_numpy(v) for v in model.non_trainable_variables]


def _nonzero_lora_factors(model):
    # LoRA's B factors start at 0; non-zero ones give every factor a gradient
    # (and AWP, whose sizes are relative to each weight, something to perturb).
    for variable in model.trainable_variables:
        if variable.path.endswith("lora_kernel_b"):
            variable.assign(np.random.RandomState(1).normal(0, 0.3, variable.shape))


class TestCausalLM(TestCase):
    def teardown_method(self, method):
        keras.mixed_precision.set_dtype_policy("float32")

    @pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
    def test_per_example_fgm_step_equals_an_independent_route(self, lora):
        epsilon = 0.3
        model = compile_sgd(gemma(lora_rank=2 if lora else None), LR)
        if lora:
            _nonzero_lora_factors(model)
        # Padding positions weigh 1 in the loss: the gradient reaches them,
        # and per example they must still get no perturbation.
        x, y, sample_weight = causal_batch(padding_weight=1.0)
        route = Route(model, x, y, sample_weight)
        values, frozen = route.values(), _frozen_values(model)

        clean_loss, clean_grads, lookup_grad = route.gradients(values)
        padding = x["padding_mask"] == 0
        assert np.abs(lookup_grad[padding]).max() > 0.01
        perturbation = per_example_fgm(lookup_grad, x["padding_mask"], epsilon)
        adversarial_loss, adversarial_grads, _ = route.gradients(values, perturbation)
        expected = [v - LR * (c + a) for v, c, a in zip(values, clean_grads, adversarial_grads)]
        # The same step with the padding perturbed (normalised over every
        # position): what the check would see if keras_adv perturbed padding.
        _, padded_grads, _ = route.gradients(values, per_example_fgm(lookup_grad, None, epsilon))
        padded = [v - LR * (c + a) for v, c, a in zip(values, clean_grads, padded_grads)]

        keras_adv.adversarial_training(model, "token_embedding", epsilon, per_example=True)
        history = model.fit(x, y, sample_weight=sample_weight, batch_size=len(y), shuffle=False,
                            verbose=0).history

        self.assertAllClose(history["adversarial_loss"][0], adversarial_loss, rtol=1e-5)
        assert adversarial_loss > clean_loss + 0.05
        actual = [to_numpy(v) for v in model.trainable_variables]
        rtol, atol = 1e-4, 2e-6
        for got, want in zip(actual, expected):
            self.assertAllClose(got, want, rtol=rtol, atol=atol)
        # Perturbed padding would miss that tolerance many times over.
        assert max((np.abs(p - e) / (atol + rtol * np.abs(e))).max() for p, e in zip(padded, expected)) > 20
        self.assertWeightsBitEqual(_frozen_values(model), frozen)
        if lora:  # Everything but the LoRA factors is frozen, the embedding included.
            assert all("lora_kernel" in v.path for v in model.trainable_variables)
            assert any(v is model.backbone.token_embedding.embeddings for v in model.non_trainable_variables)

    @pytest.mark.parametrize(
        "method,options,history_name,policy",
        [
            # FGM per example: test_per_example_fgm_step_equals_an_independent_route[lora].
            # FGM on the matrix: the touched rows of a causal LM's batch.
            ("fgm", {}, "adversarial_loss", "float32"),
            # PGD (on the matrix) in bfloat16, as large models are fine-tuned.
            ("pgd", dict(steps=2), "adversarial_loss", "mixed_bfloat16"),
            ("freelb", dict(steps=2), "adversarial_loss", "float32"),
            ("vat", {}, "vat_divergence", "float32"),
            ("awp", {}, "adversarial_loss", "float32"),
            # NEFTune: test_neftune_step_equals_the_route_fed_its_noise.
        ],
        ids=["fgm", "pgd bfloat16", "freelb", "vat", "awp"],
    )
    def test_lora_trains_only_the_factors_with_each_method(self, method, options, history_name, policy):
        keras.mixed_precision.set_dtype_policy(policy)
        model = compile_sgd(gemma(lora_rank=2), LR)
        assert model.backbone.token_embedding.compute_dtype == policy.replace("mixed_", "")
        _nonzero_lora_factors(model)
        x, y, sample_weight = causal_batch()
        frozen = _frozen_values(model)
        trained = [to_numpy(v) for v in model.trainable_variables]
        if method == "awp":
            # Its default selection follows what is trainable: the LoRA
            # factors (every trainable matrix), never a frozen weight.
            chosen = keras_adv.AWP().selected(model.trainable_variables, model.name)
            assert [model.trainable_variables[i].path for i in chosen] == [
                v.path for v in model.trainable_variables
            ] and all("lora_kernel" in v.path for v in model.trainable_variables)
            keras_adv.adversarial_training(model, method="awp")
        else:
            keras_adv.adversarial_training(model, "token_embedding", method=method, **options)
        history = model.fit(x, y, sample_weight=sample_weight, batch_size=len(y), verbose=0).history

        self.assertWeightsBitEqual(_frozen_values(model), frozen)
        after = [to_numpy(v) for v in model.trainable_variables]  # float32 (the policy's variable dtype)
        assert all(np.abs(a - b).max() > 1e-5 for a, b in zip(after, trained))
        # The lookups of the frozen embedding are perturbed (AWP: the factors):
        # one step, no dropout, and the attack goes up the loss.
        term = history[history_name][0]
        assert np.isfinite(term)
        if method == "vat":
            assert term > 1e-4
        else:
            assert term > history["loss"][0] + 1e-3

    def test_neftune_step_equals_the_route_fed_its_noise(self):
        # With LoRA, as instruction tuning runs NEFTune: the frozen embedding's
        # lookups read the step's own uniform noise, zero at padding (which
        # reaches the loss here) and scaled alpha / sqrt(L d), L each example's
        # non-padding length; the update is that pass's gradient, of the factors.
        alpha = 5.0
        model = compile_sgd(gemma(lora_rank=2), LR)
        _nonzero_lora_factors(model)
        x, y, sample_weight = causal_batch(padding_weight=1.0)
        route = Route(model, x, y, sample_weight)
        values, frozen = route.values(), _frozen_values(model)
        keras_adv.adversarial_training(model, "token_embedding", method=keras_adv.NEFTune(alpha=alpha))
        dim = model.backbone.token_embedding.output_dim
        noise = step_noise_of(model, x["token_ids"], kind="uniform", dim=dim)
        mask = x["padding_mask"][..., None].astype("float64")
        scaled = alpha / np.sqrt(mask.sum(axis=1, keepdims=True) * dim) * noise * mask
        noisy_loss, grads, _ = route.gradients(values, scaled.astype("float32"))
        _, plain_grads, _ = route.gradients(values)
        expected = [v - LR * g for v, g in zip(values, grads)]
        plain = [v - LR * g for v, g in zip(values, plain_grads)]

        history = model.fit(x, y, sample_weight=sample_weight, batch_size=len(y), shuffle=False,
                            verbose=0).history

        self.assertAllClose(history["loss"][0], noisy_loss, rtol=1e-5)
        rtol, atol = 1e-4, 2e-6
        for got, want in zip([to_numpy(v) for v in model.trainable_variables], expected):
            self.assertAllClose(got, want, rtol=rtol, atol=atol)
        # A plain step would miss that tolerance many times over.
        assert max((np.abs(p - e) / (atol + rtol * np.abs(e))).max() for p, e in zip(plain, expected)) > 20
        self.assertWeightsBitEqual(_frozen_values(model), frozen)

    def test_lora_on_the_embedding_itself_is_refused(self):
        model = compile_sgd(gemma(), LR)
        embedding = model.backbone.token_embedding
        embedding.enable_lora(2)
        # The matrix variable is still found and named (it is frozen now).
        assert keras_adv.find_embedding(model, "token_embedding") is embedding._embeddings
        assert keras_adv.find_embedding(model, "token_embedding/embeddings") is embedding._embeddings
        assert "token_embedding/embeddings" in "".join(keras_adv.embedding_candidates(model))
        with pytest.raises(NotImplementedError, match="LoRA is enabled on it"):
            keras_adv.adversarial_training(model, "token_embedding", 0.1)

        # Enabled after the call: refused when the step runs.
        self.setup_method(None)
        model = compile_sgd_linear(linear_text_model(), lr=LR)
        keras_adv.adversarial_training(model, "emb", 0.1)
        model.get_layer("emb").enable_lora(2)
        x, y = batch()
        with pytest.raises(NotImplementedError, match="backbone.enable_lora"):
            model.fit(x, y, batch_size=len(x), verbose=0)


class TestBfloat16(TestCase):
    def setup_method(self, method):
        super().setup_method(method)
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")

    def teardown_method(self, method):
        keras.mixed_precision.set_dtype_policy("float32")

    @pytest.mark.parametrize("per_example", [False, True], ids=["matrix", "per example"])
    def test_epsilon_means_what_it_means_in_float32(self, per_example):
        model = linear_text_model()
        model.compile(optimizer=sgd(LR), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        # No loss scaling in bfloat16 (float32's exponent range).
        assert isinstance(model.optimizer, keras.optimizers.SGD)
        assert model.get_layer("emb").compute_dtype == "bfloat16"
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(model, "emb", 2.0, per_example=per_example)
        history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
        if per_example:
            expected, _, adversarial_loss, _ = reference.per_example_adversarial_sgd_step(
                before, x, y, LR, "fgm", 2.0, "sum"
            )
        else:
            expected, _, adversarial_loss = reference.adversarial_sgd_step(before, x, y, LR, "fgm", 2.0, "sum")
        plain, _ = reference.plain_sgd_step(before, x, y, LR)
        # bfloat16 activations (8 bits of mantissa): agreement to ~1.5e-3
        # (measured on the three backends), while epsilon's own effect (the
        # step against one of twice the clean gradient) is over 0.05.
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-2, atol=3e-3)
        self.assertAllClose(history["adversarial_loss"][0], adversarial_loss, rtol=1e-2)
        assert max(np.abs(e - (2 * p - b)).max() for e, p, b in zip(expected, plain, before)) > 0.05


def _accumulating_model():
    """The linear model with SGD applying the mean gradient of every 2 batches."""
    model = linear_text_model()
    model.compile(optimizer=keras.optimizers.SGD(LR, gradient_accumulation_steps=2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class TestGradientAccumulation(TestCase):
    def test_accumulated_steps_are_one_update_by_their_mean_gradient(self):
        model = _accumulating_model()
        x, y = batch(size=8, seed=3)
        before = params_of(model)
        keras_adv.adversarial_training(model, "emb", 0.7)
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        # Each batch's adversarial step from the same weights; the update is
        # by the mean of their gradients: the mean of the two updated weights.
        steps = [reference.adversarial_sgd_step(before, x[i:i + 4], y[i:i + 4], LR, "fgm", 0.7, "sum")[0]
                 for i in (0, 4)]
        expected = [(a + b) / 2 for a, b in zip(*steps)]
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        assert int(to_numpy(model.optimizer.iterations)) == 1
        # Each batch was attacked: not the update of twice the clean gradients.
        plain = [reference.plain_sgd_step(before, x[i:i + 4], y[i:i + 4], LR)[0] for i in (0, 4)]
        unattacked = [a + b - p for a, b, p in zip(*plain, before)]
        assert max(np.abs(e - u).max() for e, u in zip(expected, unattacked)) > 1e-2

    def test_start_step_and_schedule_count_updates(self):
        # `optimizer.iterations`, as Keras counts updates under accumulation:
        # 4 batches, 2 updates; the first update's batches are plain, the
        # second's adversarial with the schedule's value at update 1 (0.7;
        # a count of batches would give 0.2).
        model = _accumulating_model()
        x, y = batch(size=16, seed=4)
        params = params_of(model)
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.7, 0.2])
        keras_adv.adversarial_training(model, "emb", schedule, start_step=1)
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        for update in range(2):
            steps = []
            for i in (8 * update, 8 * update + 4):
                xb, yb = x[i:i + 4], y[i:i + 4]
                if update == 0:
                    steps.append(reference.plain_sgd_step(params, xb, yb, LR)[0])
                else:
                    steps.append(reference.adversarial_sgd_step(params, xb, yb, LR, "fgm", 0.7, "sum")[0])
            params = [(a + b) / 2 for a, b in zip(*steps)]
        for actual, want in zip(params_of(model), params):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
