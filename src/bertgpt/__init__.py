"""BERT and GPT, from the library and written by hand, fine-tuned on sentiment and POS tagging, and compared."""

import os
from pathlib import Path

# The checkout this package runs from: conf/ and logs/ live here, and the configs read it as PROJECT_ROOT.
ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
