"""work IN OUT [--allocate-mb N] [--sleep S]: the sum of squares of IN's values.

--allocate-mb holds N MiB while working and --sleep waits S seconds first: knobs for tests of
out-of-memory and timeout handling."""

import argparse
import time

from diamond_io import read, write

parser = argparse.ArgumentParser()
parser.add_argument("source")
parser.add_argument("target")
parser.add_argument("--allocate-mb", type=int, default=0)
parser.add_argument("--sleep", type=float, default=0.0)
args = parser.parse_args()
time.sleep(args.sleep)
ballast = bytearray(args.allocate_mb * 2**20)
for i in range(0, len(ballast), 4096):  # touch every page so it is really resident
    ballast[i] = 1
data = read(args.source)
write(args.target, {"part": data["part"], "sum_of_squares": sum(v * v for v in data["values"])})
print(f"work: part {data['part']} done")
