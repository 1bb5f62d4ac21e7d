"""The math objects against a hand-written numpy reference."""

import math

import numpy as np
import pytest

from keras_adv import AWP, FGM, PGD, VAT, FreeLB, NEFTune, RDrop, l2_normalize, project_to_ball
from keras_adv.methods import get_method
from tests import reference
from tests.testing import TestCase


class TestMath(TestCase):
    def test_l2_normalize_matches_numpy(self):
        g = np.random.RandomState(0).normal(size=(7, 3)).astype("float32")
        self.assertAllClose(l2_normalize(g), reference.l2_normalize(g.astype("float64")))
        self.assertAllClose(np.sqrt(np.sum(np.square(l2_normalize(g)))), 1.0)

    @pytest.mark.parametrize("bad", [0.0, np.inf, np.nan])
    def test_l2_normalize_gives_zeros_without_a_usable_norm(self, bad):
        g = np.zeros((4, 2), "float32")
        g[1, 1] = bad
        out = np.asarray(l2_normalize(g))
        self.assertBitEqual(out, np.zeros((4, 2), "float32"))

    def test_project_to_ball(self):
        r = np.array([[3.0, 4.0]], "float32")  # norm 5
        self.assertAllClose(project_to_ball(r, 1.0), [[0.6, 0.8]])
        self.assertAllClose(project_to_ball(r, 5.0), r)
        self.assertAllClose(project_to_ball(r, 10.0), r)

    def test_fgm_step(self):
        g = np.random.RandomState(1).normal(size=(5, 4)).astype("float32")
        self.assertAllClose(FGM(0.3).ascend(None, g), 0.3 * reference.l2_normalize(g.astype("float64")))

    def test_pgd_steps_match_numpy(self):
        rng = np.random.RandomState(2)
        method = PGD(epsilon=0.5, alpha=0.3, steps=3)
        r, expected = None, np.zeros((5, 4))
        for _ in range(method.steps):
            g = rng.normal(size=(5, 4)).astype("float32")
            r = method.ascend(r, g)
            expected = reference.project(expected + 0.3 * reference.l2_normalize(g.astype("float64")), 0.5)
        self.assertAllClose(r, expected)
        self.assertAllClose(np.sqrt(np.sum(np.square(r))), 0.5, rtol=1e-6)

    def test_objects_are_immutable(self):
        with pytest.raises(AttributeError):
            FGM(0.5).epsilon = 1.0

    def test_get_method(self):
        assert get_method("FGM", epsilon=0.5) == FGM(0.5)
        assert get_method("fgm") == FGM(1.0)
        assert get_method("pgd") == PGD(1.0, 0.3, 3)
        assert get_method("pgd", epsilon=0.5, steps=2, alpha=0.1) == PGD(0.5, 0.1, 2)
        assert get_method(PGD(1.0)) == PGD(1.0)
        # Relative: the unset sizes from RELATIVE_DEFAULTS, by mode; given ones kept.
        assert get_method("fgm", relative=True) == FGM(0.01)
        assert get_method("fgm", relative=True, per_example=True) == FGM(0.003)
        assert get_method("pgd", epsilon=0.1, relative=True, per_example=True) == PGD(0.1, 0.001, 3)
        assert get_method("vat", relative=True) == VAT(epsilon=0.1, xi=0.01)

    @pytest.mark.parametrize(
        "make,error,words",
        [
            (lambda: FGM(0), ValueError, "epsilon"),
            (lambda: FGM(math.nan), ValueError, "epsilon"),
            (lambda: FGM(None), TypeError, "epsilon"),
            (lambda: PGD(1.0, alpha=0), ValueError, "alpha"),
            (lambda: PGD(1.0, steps=0), ValueError, "steps"),
            (lambda: PGD(1.0, steps="3"), TypeError, "steps"),
            (lambda: get_method(None, epsilon=1.0, steps=1, alpha=1.0), ValueError, "Unknown method"),
        ],
    )
    def test_bad_parameters(self, make, error, words):
        with pytest.raises(error, match=words):
            make()


class TestFreeLBMath(TestCase):
    def test_random_start_of_unit_noise_has_each_examples_norm_init_magnitude(self):
        # Noise of +-1 everywhere: n entries of init / sqrt(n) have norm init.
        noise = np.where(np.random.RandomState(0).rand(3, 12) > 0.5, 1.0, -1.0)
        mask = np.ones((3, 12))
        mask[1, 8:] = 0.0  # Padding: zero there, and not counted in n.
        mask[2, :] = 0.0  # All padding: zeros, not NaN.
        start = FreeLB(init_magnitude=0.3).initial(noise, mask)
        norms = np.sqrt((start**2).sum(axis=1))
        self.assertAllClose(norms, [0.3, 0.3, 0.0])
        self.assertAllClose(start[1, 8:], np.zeros(4))
        self.assertAllClose(np.abs(start[1, :8]), np.full(8, 0.3 / math.sqrt(8)))

    def test_ascend_projects_each_example_only_with_a_radius(self):
        g = np.array([[3.0, 4.0], [0.0, 2.0]])
        free = FreeLB(alpha=2.0).ascend(None, g)
        self.assertAllClose(free, [[1.2, 1.6], [0.0, 2.0]])
        bounded = FreeLB(epsilon=1.0, alpha=2.0).ascend(None, g)
        self.assertAllClose(bounded, [[0.6, 0.8], [0.0, 1.0]])

    def test_by_name(self):
        assert get_method("freelb", steps=2, alpha=0.2) == FreeLB(epsilon=0.0, alpha=0.2, steps=2)


class TestAWPMath(TestCase):
    def _numpy_ascent(self, r, g, w, alpha, epsilon):
        current = w if r is None else w + r
        step = alpha * np.linalg.norm(current) * g / np.linalg.norm(g)
        moved = step if r is None else r + step
        return np.clip(moved, -epsilon * np.abs(w), epsilon * np.abs(w))

    def test_ascend_matches_numpy_in_each_framework(self):
        import keras
        import tensorflow as tf

        rng = np.random.RandomState(5)
        w, g1, g2 = (rng.normal(size=(6, 4)) for _ in range(3))
        method = AWP(alpha=0.4, epsilon=0.3)
        expected = self._numpy_ascent(None, g1, w, 0.4, 0.3)
        expected = self._numpy_ascent(expected, g2, w, 0.4, 0.3)
        assert 0 < np.mean(np.abs(expected) == 0.3 * np.abs(w)) < 1  # Clipped in part.
        for convert in (np.float32, tf.constant, keras.ops.convert_to_tensor):
            w32, g1_32, g2_32 = (convert(a.astype("float32")) for a in (w, g1, g2))
            r = method.ascend(None, g1_32, w32)
            self.assertAllClose(np.asarray(method.ascend(r, g2_32, w32)), expected, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("bad", [0.0, np.inf, np.nan])
    def test_no_step_without_a_usable_gradient_norm(self, bad):
        w = np.ones((3, 2), "float32")
        g = np.zeros((3, 2), "float32")
        g[0, 1] = bad
        self.assertBitEqual(np.asarray(AWP(epsilon=0.5).ascend(None, g, w)), np.zeros((3, 2), "float32"))


class TestVATDivergences(TestCase):
    """VAT's divergences (TensorFlow tensors) against numpy: the KL of
    categorical and Bernoulli outputs, from logits or probabilities alike."""

    def _logits(self):
        rng = np.random.RandomState(3)
        return rng.normal(size=(4, 3)), rng.normal(size=(4, 3))

    def _divergence(self, kind, clean, perturbed, symmetric=False):
        import tensorflow as tf

        from keras_adv import VAT

        out = VAT(symmetric=symmetric).per_example_divergence(
            tf.constant(clean, tf.float32), tf.constant(perturbed, tf.float32), kind
        )
        return np.asarray(out, "float64")

    @pytest.mark.parametrize("symmetric", [False, True])
    def test_categorical(self, symmetric):
        a, b = self._logits()
        p = np.exp(a) / np.exp(a).sum(axis=1, keepdims=True)
        q = np.exp(b) / np.exp(b).sum(axis=1, keepdims=True)
        want = (p * np.log(p / q)).sum(axis=1)
        if symmetric:
            want = want + (q * np.log(q / p)).sum(axis=1)
        self.assertAllClose(self._divergence("categorical_logits", a, b, symmetric), want, rtol=1e-5)
        self.assertAllClose(self._divergence("categorical", p, q, symmetric), want, rtol=1e-4)

    def test_bernoulli_per_output(self):
        a, b = self._logits()
        p, q = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
        want = (p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))).sum(axis=1)
        self.assertAllClose(self._divergence("bernoulli_logits", a, b), want, rtol=1e-5)
        self.assertAllClose(self._divergence("bernoulli", p, q), want, rtol=1e-4)

    def test_per_token_outputs_sum_over_every_position(self):
        # A causal LM's [batch, positions, vocabulary] logits: each example's
        # divergence sums its positions' (summed over the trailing axes).
        rng = np.random.RandomState(4)
        a, b = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
        want = sum(self._divergence("categorical_logits", a[:, t], b[:, t]) for t in range(3))
        self.assertAllClose(self._divergence("categorical_logits", a, b), want, rtol=1e-5)

    def test_symmetric_with_a_callable_is_refused(self):
        from keras_adv import VAT

        with pytest.raises(ValueError, match="symmetric"):
            VAT(symmetric=True, divergence=lambda clean, perturbed: clean)


class TestRDropMath(TestCase):
    def test_divergence_is_the_mean_of_both_kl_divergences(self):
        import tensorflow as tf

        rng = np.random.RandomState(6)
        a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
        p = np.exp(a) / np.exp(a).sum(axis=1, keepdims=True)
        q = np.exp(b) / np.exp(b).sum(axis=1, keepdims=True)
        want = 0.5 * ((p * np.log(p / q)).sum(axis=1) + (q * np.log(q / p)).sum(axis=1))
        got = RDrop().per_example_divergence(tf.constant(a, tf.float32), tf.constant(b, tf.float32),
                                             "categorical_logits")
        self.assertAllClose(np.asarray(got), want, rtol=1e-5)
        # Symmetric: the passes' order does not matter.
        swapped = RDrop().per_example_divergence(tf.constant(b, tf.float32), tf.constant(a, tf.float32),
                                                 "categorical_logits")
        self.assertAllClose(np.asarray(swapped), want, rtol=1e-5)

    def test_by_name_and_bad_parameters(self):
        assert get_method("rdrop", alpha=0.5) == RDrop(alpha=0.5)
        assert get_method("rdrop") == RDrop(alpha=1.0)
        with pytest.raises(ValueError, match="alpha"):
            RDrop(alpha=-1.0)
        with pytest.raises(ValueError, match="epsilon"):
            get_method("rdrop", epsilon=0.1)
        with pytest.raises(ValueError, match="divergence"):
            RDrop(divergence="hinge")


class TestNEFTuneMath(TestCase):
    def test_noise_is_scaled_by_alpha_over_the_root_of_each_examples_entries(self):
        rng = np.random.RandomState(7)
        noise = rng.uniform(-1.0, 1.0, size=(3, 12))
        mask = np.ones((3, 12))
        mask[1, 6:] = 0.0  # Padding: no noise there, and not counted.
        mask[2, :] = 0.0  # All padding: zeros, not NaN.
        got = NEFTune(alpha=5.0).initial(noise, mask)
        self.assertAllClose(got[0], noise[0] * 5.0 / math.sqrt(12))
        self.assertAllClose(got[1], np.concatenate([noise[1, :6] * 5.0 / math.sqrt(6), np.zeros(6)]))
        self.assertAllClose(got[2], np.zeros(12))

    def test_by_name_and_bad_parameters(self):
        assert get_method("neftune", alpha=10.0) == NEFTune(alpha=10.0)
        assert get_method("neftune") == NEFTune(alpha=5.0)
        with pytest.raises(ValueError, match="alpha"):
            NEFTune(alpha=0.0)
        with pytest.raises(ValueError, match="steps"):
            get_method("neftune", steps=2)
