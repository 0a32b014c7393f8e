"""Linear probes of a pretrained model against random weights: see xanysat/evaluation.py.

    python benchmarks/probe.py --model xanysat/data/models/default
"""

from xanysat.apps.evaluation import main

if __name__ == "__main__":
    raise SystemExit(main())
