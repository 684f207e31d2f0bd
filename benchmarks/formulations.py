"""The formulation benchmark: `python benchmarks/formulations.py [OPTIONS]` is `edm-space bench formulations [OPTIONS]`.

    python benchmarks/formulations.py --data toy      # 7 presets x 3 seeds on 2-D moons (MLP)
    python benchmarks/formulations.py --data digits   # 7 presets x 3 seeds on 8x8 digits (small U-Net)
    python benchmarks/formulations.py --quick         # toy smoke run, 2 presets, 1 seed, under a minute

Every preset trains the same network with the same optimizer, images and seeds;
each model is sampled with its own default sampler, with Heun + edm steps at
35 NFE, on a Heun/Euler NFE sweep, and cross-sampled with another formulation's
ODE. Results go to benchmarks/results/formulations_{toy,digits}.{json,md} and
formulations_{toy,digits}_{nfe,training,lossfloor}.png; see
edm_space/bench_formulations.py for what is measured and how. Finished runs are
kept in --work-dir and reused when the settings match (--fresh retrains).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without an install


def main(argv=None) -> None:
    from edm_space.cli import main as cli_main

    cli_main(["bench", "formulations", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
