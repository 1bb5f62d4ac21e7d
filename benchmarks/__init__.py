"""Benchmarks of keras_adv: not part of the package, nor of its tests."""
