"""Run every benchmark in turn (each writes bench/results/<name>.json); about 30 minutes on 2 cores."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ("bench.tap_sampling", "bench.oft", "bench.training")


def main() -> None:
    for module in BENCHMARKS:
        print(f"== {module}", flush=True)
        subprocess.run([sys.executable, "-m", module, *sys.argv[1:]], check=True)


if __name__ == "__main__":
    main()
