"""python -m loadtest.chaos --broker memory|redis|nats|kafka --seconds N --seed S --report-dir DIR"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from .runner import Options, main_result, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__)
    parser.add_argument("--broker", choices=["memory", "redis", "nats", "kafka"], required=True)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of publishing and faults")
    parser.add_argument("--seed", type=int, default=None, help="the fault schedule's seed (random if omitted; always printed)")
    parser.add_argument("--report-dir", type=Path, default=Path("loadtest/results/chaos"))
    parser.add_argument("--rate", type=float, default=300.0, help="publications per second, over all channels")
    parser.add_argument("--channels", type=int, default=12)
    parser.add_argument("--ws-clients", type=int, default=36)
    parser.add_argument("--sse-clients", type=int, default=18)
    parser.add_argument(
        "--fault-gap", type=float, nargs=2, default=(5.0, 12.0), metavar=("MIN", "MAX"),
        help="seconds between two faults, drawn uniformly (default 5 12)",
    )
    parser.add_argument("--first-fault", type=float, default=4.0, help="seconds before the first fault")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    print(f"chaos: broker {args.broker}, seed {seed}", flush=True)
    options = Options(
        broker=args.broker, seconds=args.seconds, seed=seed, report_dir=args.report_dir, rate=args.rate,
        channels=args.channels, ws_clients=args.ws_clients, sse_clients=args.sse_clients,
        fault_gap=(args.fault_gap[0], args.fault_gap[1]), first_fault=args.first_fault,
    )
    return main_result(run(options))


if __name__ == "__main__":
    sys.exit(main())
