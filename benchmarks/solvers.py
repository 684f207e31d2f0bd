"""The solver benchmark: `python benchmarks/solvers.py [OPTIONS]` is `edm-space bench solvers [OPTIONS]`.

    pip install -e ".[data,plot]"
    python benchmarks/solvers.py                 # digits-gmm, the full sweep (a few minutes on 2 cores)
    python benchmarks/solvers.py --quick         # 2-D mixture, under a minute
    python benchmarks/solvers.py --target digits # the finite digits set (samples snap to training points)

Results go to benchmarks/results/ (JSON, Markdown, PNG, optimized steps); see
edm_space/bench.py for what is measured and how.
"""

import sys

from edm_space.cli import main

if __name__ == "__main__":
    main(["bench", "solvers", *sys.argv[1:]])
