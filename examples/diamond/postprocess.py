"""postprocess F3 F4 OUT [--sleep S]: combine the two parts into the final result."""

import argparse
import time

from diamond_io import read, write

parser = argparse.ArgumentParser()
parser.add_argument("parts", nargs=2)
parser.add_argument("target")
parser.add_argument("--sleep", type=float, default=0.0)
args = parser.parse_args()
time.sleep(args.sleep)
parts = [read(p) for p in args.parts]
write(args.target, {"total": sum(p["sum_of_squares"] for p in parts), "parts": len(parts)})
print("postprocess: done")
