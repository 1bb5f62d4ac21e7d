"""The closed-form checks (tests/closed_form.py) on Keras 3 with TensorFlow."""

from tests.closed_form import EquivalenceTests, OneStepClosedFormTests


class TestOneStepClosedForm(OneStepClosedFormTests):
    pass


class TestEquivalences(EquivalenceTests):
    pass
