"""Where the perturbation enters: the lookups' outputs, and the touched rows."""

import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_adv._stacks.lookup import Lookups, tapped_lookups
from keras_adv._stacks.tf_rows import add_gradients, padding_masks, perturbation_space
from tests.testing import TestCase


def _embedding(vocab, dim):
    layer = keras.layers.Embedding(vocab, dim)
    layer.build((None,))
    return layer


def _lookups(*ids_list):
    lookups = Lookups()
    lookups.ids.extend(ids_list)
    return lookups


class TestTouchedRows(TestCase):
    @pytest.mark.parametrize("jit", [False, True])
    def test_rows_are_the_matrix_gradient_and_lookups_read_them_back(self, jit):
        rng = np.random.RandomState(0)
        ids = [rng.randint(0, 6, (3, 4)).astype("int32"), np.array([[5, 0]], "int32")]
        ids[0][0, 0] = 0  # Token 0 is a real token too.
        grads = [rng.randn(3, 4, 2).astype("float32"), rng.randn(1, 2, 2).astype("float32")]
        dense = np.zeros((9, 2))
        for i, g in zip(ids, grads):
            np.add.at(dense, i.reshape(-1), g.reshape(-1, 2))

        layer = _embedding(vocab=9, dim=2)

        @tf.function(jit_compile=jit)
        def rows_and_lookups(ids_a, ids_b, grad_a, grad_b, probe):
            touched = perturbation_space(False, _lookups(ids_a, ids_b), layer)
            rows = touched.rows([ids_a, ids_b], [grad_a, grad_b])
            return rows, touched.at(0, ids_a, rows), touched.at(1, probe, rows)

        probe = np.array([[8, 5, 3]], "int32")  # 8 is not in the batch.
        rows, at_a, at_probe = rows_and_lookups(*ids, *grads, probe)
        # The rows hold each token's summed gradient once, the rest are zeros:
        # the norm equals the norm of the matrix gradient.
        self.assertAllClose(np.linalg.norm(rows), np.linalg.norm(dense), rtol=1e-6)
        self.assertAllClose(at_a, dense[ids[0]], rtol=1e-6, atol=1e-6)
        self.assertAllClose(at_probe, [[[0, 0], dense[5], dense[3]]], rtol=1e-6, atol=1e-6)

    def test_a_token_the_clean_pass_did_not_touch_adds_to_no_row(self):
        layer = _embedding(vocab=9, dim=1)
        clean_ids = tf.constant([[2, 5]])
        touched = perturbation_space(False, _lookups(clean_ids), layer)
        later_ids = tf.constant([[2, 3]])  # 3 replaced 5 (random token replacement).
        rows = touched.rows([later_ids], [tf.constant([[[1.0], [7.0]]])])
        self.assertAllClose(tf.sort(tf.reshape(rows, [-1])), [0.0, 1.0])

    def test_float_ids_as_bert4keras_feeds_them(self):
        ids = tf.constant([[3.0, 1.0, 3.0]])
        touched = perturbation_space(False, _lookups(ids), _embedding(vocab=5, dim=1))
        rows = touched.rows([ids], [tf.constant([[[1.0], [2.0], [4.0]]])])
        self.assertAllClose(touched.at(0, ids, rows), [[[5.0], [2.0], [5.0]]])

    def test_unit_is_the_norm_of_the_touched_rows_each_once(self):
        layer = _embedding(vocab=6, dim=2)
        ids = tf.constant([[1, 4, 1], [4, 4, 5]])
        E = layer.embeddings.numpy().astype("float64")
        expected = np.sqrt(np.sum(E[[1, 4, 5]] ** 2))
        self.assertAllClose(perturbation_space(False, _lookups(ids), layer).unit(), expected, rtol=1e-6)

    def test_add_gradients_keeps_slices_sparse(self):
        a = tf.IndexedSlices(tf.ones([2, 3]), tf.constant([0, 2]), tf.constant([4, 3]))
        b = tf.IndexedSlices(2 * tf.ones([1, 3]), tf.constant([2]), tf.constant([4, 3]))
        total = add_gradients(a, b)
        assert isinstance(total, tf.IndexedSlices)
        self.assertAllClose(tf.convert_to_tensor(total), [[1] * 3, [0] * 3, [3] * 3, [0] * 3])
        assert add_gradients(None, b) is b


class TestExampleRows(TestCase):
    def test_padding_gets_no_perturbation_and_counts_in_no_norm(self):
        layer = keras.layers.Embedding(10, 2, mask_zero=True)
        layer.build((None,))
        ids = tf.constant([[3, 4, 0], [5, 0, 0]])
        (mask,) = padding_masks(layer, [ids])
        outputs = tf.ones([2, 3, 2])
        lookups = Lookups()
        lookups.ids.append(ids)
        lookups.outputs.append(outputs)
        rows = perturbation_space(True, lookups, layer, [mask])
        gradient = tf.constant(np.arange(12, dtype="float32").reshape(2, 3, 2) + 1)
        flat = rows.rows([ids], [gradient])
        # Example 0 keeps positions 0 and 1, example 1 position 0.
        self.assertAllClose(flat, [[1, 2, 3, 4, 0, 0], [7, 8, 0, 0, 0, 0]])
        back = rows.at(0, ids, flat)
        self.assertAllClose(back, gradient.numpy() * mask.numpy()[..., None])
        # The relative unit: each example's clean vectors at its real positions.
        self.assertAllClose(rows.unit(), [[2.0], [np.sqrt(2.0)]])


class TestTappedLookups(TestCase):
    def _layer(self):
        layer = keras.layers.Embedding(10, 3)
        layer.build((None,))
        return layer

    def test_lookups_return_what_the_transform_gives_and_are_recorded(self):
        layer = self._layer()
        ids = np.array([[1, 2]], "int32")
        with tapped_lookups(layer, lambda k, i, out: out + 1.0) as lookups:
            inside = layer(ids)
        self.assertBitEqual(inside, layer.embeddings.numpy()[ids] + np.float32(1.0))
        assert len(lookups.ids) == 1 and lookups.outputs[0] is inside
        # The layer is as it was: no instance attribute left, plain lookups.
        assert "call" not in vars(layer)
        self.assertBitEqual(layer(ids), layer.embeddings.numpy()[ids])

    def test_reverse_call_of_a_tied_embedding_passes_through(self):
        import keras_hub

        layer = keras_hub.layers.ReversibleEmbedding(10, 3)
        layer.build((None,))
        vectors = np.ones((1, 2, 3), "float32")
        with tapped_lookups(layer, lambda k, i, out: out * 0.0) as lookups:
            logits = layer(vectors, reverse=True)
        self.assertBitEqual(logits, layer(vectors, reverse=True))
        assert lookups.ids == []

    def test_a_call_of_the_instance_own_is_put_back(self):
        # tf-keras gives layers revived from a SavedModel a `call` of their own.
        layer = self._layer()
        own = layer.call
        layer.call = own
        with tapped_lookups(layer, lambda k, i, out: out + 1.0):
            assert layer.call is not own
        assert vars(layer)["call"] is own

    def test_the_layer_is_restored_when_the_block_raises(self):
        layer = self._layer()
        with pytest.raises(RuntimeError, match="boom"):
            with tapped_lookups(layer, lambda k, i, out: out * 0.0):
                raise RuntimeError("boom")
        assert "call" not in vars(layer)

    def test_each_thread_sees_only_its_own_tap(self):
        # MirroredStrategy runs each replica's step in a thread of its own.
        layer = self._layer()
        ids = np.array([[4]], "int32")
        plain = layer.embeddings.numpy()[ids]
        started, finish, seen = threading.Event(), threading.Event(), {}

        def other_thread():
            with tapped_lookups(layer, lambda k, i, out: out + 2.0):
                started.set()
                finish.wait(10)
                seen["other"] = layer(ids).numpy()

        thread = threading.Thread(target=other_thread)
        thread.start()
        started.wait(10)
        seen["untapped"] = layer(ids).numpy()
        with tapped_lookups(layer, lambda k, i, out: out + 1.0):
            seen["mine"] = layer(ids).numpy()
        finish.set()
        thread.join(10)
        self.assertBitEqual(seen["untapped"], plain)
        self.assertBitEqual(seen["mine"], plain + np.float32(1.0))
        self.assertBitEqual(seen["other"], plain + np.float32(2.0))
        assert "call" not in vars(layer)
