"""keras_adv: one-line embedding-space adversarial training (FGM, FGSM, PGD, FreeLB, VAT, gradient penalty), adversarial weight perturbation (AWP), R-Drop and NEFTune, for Keras."""

from keras_adv.api import adversarial_training
from keras_adv.api import remove_adversarial_training
from keras_adv.bert4keras_setup import prepare_bert4keras
from keras_adv.custom_loop import add_gradients
from keras_adv.custom_loop import perturbed_embedding
from keras_adv.embedding import embedding_candidates
from keras_adv.embedding import find_embedding
from keras_adv.methods import AWP
from keras_adv.methods import FGM
from keras_adv.methods import FGSM
from keras_adv.methods import FreeLB
from keras_adv.methods import GradientPenalty
from keras_adv.methods import NEFTune
from keras_adv.methods import PGD
from keras_adv.methods import RDrop
from keras_adv.methods import RELATIVE_DEFAULTS
from keras_adv.methods import VAT
from keras_adv.methods import l2_normalize
from keras_adv.methods import project_to_ball

__version__ = "0.1.0"

__all__ = [
    "adversarial_training",
    "remove_adversarial_training",
    "prepare_bert4keras",
    "perturbed_embedding",
    "add_gradients",
    "find_embedding",
    "embedding_candidates",
    "AWP",
    "FGM",
    "FGSM",
    "FreeLB",
    "GradientPenalty",
    "PGD",
    "VAT",
    "RDrop",
    "NEFTune",
    "l2_normalize",
    "project_to_ball",
    "RELATIVE_DEFAULTS",
    "__version__",
]
