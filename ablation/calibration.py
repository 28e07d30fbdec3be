"""The ladder's verdicts calibrated by simulation: their family-wise error and power, the tables of docs/statistics.md.

    python -m ablation.calibration                   # the tables of docs/statistics.md (2,000 ladders a cell)
    python -m ablation.calibration --ladders 500     # quicker, coarser

The simulation itself (synthetic ladders with known effects, judged by the ladder's own tests) is
`ablation.analysis.simulation`.
"""

import argparse

from ablation.analysis import stats
from ablation.analysis.simulation import (CHANGES, TEST_IMAGES, calibration_table, markdown, monte_carlo_bound,
                                          sequential_table)
from ablation.cli import ArgumentParser, positive_count, run_and_exit


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m ablation.calibration", description=__doc__.splitlines()[0])
    parser.add_argument("--ladders", type=positive_count, default=2000, help="simulated ladders per cell (default: 2000)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    print(markdown(calibration_table(args.ladders)))
    print("\n--until-decided, looks at 3, 5, 7, 8 seeds:\n")
    print(markdown(sequential_table(args.ladders)))
    print(f"\n{args.ladders} ladders a cell, {CHANGES} changes, {TEST_IMAGES} test images; rope "
          f"{100 * stats.ROPE:g} point; alpha {stats.ALPHA}; 3 Monte Carlo SEs above alpha: "
          f"{monte_carlo_bound(stats.ALPHA, args.ladders):.3f}")
    return 0


if __name__ == "__main__":
    run_and_exit(main)
