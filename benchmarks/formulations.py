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
    import click

    from edm_space.bench_formulations import formulations_command

    try:
        formulations_command.main(args=argv, prog_name="formulations.py", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.ClickException as error:
        click.echo(f"error: {' '.join(error.format_message().split())}", err=True)
        sys.exit(2)
    except ValueError as error:  # ConfigError: bad input, one line
        if os.environ.get("EDM_SPACE_DEBUG"):
            raise
        click.echo(f"error: {' '.join(str(error).split())}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
