"""The ablation runner: the same model trained plainly and with each adversarial
method, side by side, with memory, time, scores and robustness.

`keras-adv ablation` (or `python -m keras_adv ablation`) is its command line.
"""
