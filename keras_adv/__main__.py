"""`python -m keras_adv ablation ...`: the same as the `keras-adv` command."""

import sys

from keras_adv.ablation.cli import main

sys.exit(main())
