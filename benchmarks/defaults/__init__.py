"""Whether each method's default sizes train the ablation runner's models.

`python -m benchmarks.defaults [--model char-cnn kerashub-bert]`, from the
repository's root: for each model, plain training and each method by name
with no size given (its relative default, `keras_adv.RELATIVE_DEFAULTS`),
each from the same initial weights, 2 epochs of Adam on 1,024 rows of the
shipped corpus; prints how far the training loss fell, and the ratio to
plain's. A default trains where the ratio is at least 0.5 (the suite checks
the same on its tiny models, tests/defaults.py). Minutes per model on 2 CPU
cores: too slow for the suite.
"""
