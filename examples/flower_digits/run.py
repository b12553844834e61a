"""Run the example on Flower's simulation engine: ``python examples/flower_digits/run.py --variant robust``.

Variants: ``robust`` (secagg's trimmed mean in plain mode), ``secure-ddp`` (secagg's secure
aggregation with distributed DP), ``flower-secaggplus`` (Flower's own SecAgg+ workflow, for
comparison). Prints the accuracy per round; ``--out FILE`` writes the run's JSON record.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the example's package, without installing it

from flower_digits.task import VARIANTS


def simulate(variant: str, *, num_clients: int = 10, rounds: int = 5, seed: int = 0, epochs: int = 2,
             out: Path | None = None, verbose: bool = False, **settings) -> dict:
    """One run of ``variant`` on Flower's simulation engine; its JSON record. ``settings``: more
    run-config values (``fraction``, ``aggregator`` as JSON, ``stage-timeout``; see the apps)."""
    from flwr.simulation import run_simulation

    if variant == "flower-secaggplus":
        from flower_digits.flower_secaggplus import make_client_app, make_server_app
    else:
        from flower_digits.client_app import make_app as make_client_app
        from flower_digits.server_app import make_app as make_server_app
    # opacus (imported through secagg's dp) calls logging.basicConfig: keep Flower's log printed once
    logging.getLogger("flwr").propagate = False
    with tempfile.TemporaryDirectory() as tmp:
        path = out or Path(tmp) / "result.json"
        run_config = {"variant": variant, "num-clients": num_clients, "num-server-rounds": rounds,
                      "seed": seed, "epochs": epochs, "result-path": str(path), **settings}
        server_app, client_app = make_server_app(run_config), make_client_app(run_config)
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_clients,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"logging_level": "ERROR" if not verbose else "INFO"}},
                       verbose_logging=verbose)
        return json.loads(Path(path).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, default="robust")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    record = simulate(args.variant, num_clients=args.clients, rounds=args.rounds, seed=args.seed,
                      out=args.out)
    print(f"{args.variant}: {args.clients} clients, {args.rounds} rounds in "
          f"{time.perf_counter() - started:.1f} s on Flower's simulation engine")
    for r, acc in sorted(record["accuracy"].items(), key=lambda kv: int(kv[0])):
        info = next((x for x in record.get("rounds", []) if x["round"] == int(r)), {})
        eps = info.get("epsilon")
        print(f"  round {r}: accuracy {acc:.3f}" + (f", epsilon {eps:.3f}" if eps is not None else "")
              + (f", aborted: {info['aborted']}" if info.get("aborted") else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
