"""preprocess INPUTS F1 F2: scale the input values and split them in two halves."""

import sys

from diamond_io import read, write

inputs, f1, f2 = sys.argv[1:4]
data = read(inputs)
values = [v * data.get("scale", 1) for v in data["values"]]
half = len(values) // 2
write(f1, {"part": 1, "values": values[:half]})
write(f2, {"part": 2, "values": values[half:]})
print(f"preprocess: {len(values)} values from {inputs}")
