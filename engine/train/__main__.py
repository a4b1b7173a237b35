"""python -m engine.train --out DIR [--minutes M] [--device cuda] [--resume]: train the demo model (see train.py)."""
from .train import main

main()
