"""Converts a torchvision ImageNet checkpoint for a WSOL backbone into a flat .npz.

  python -m fcam_jax.weights.convert --arch resnet50 --input resnet50.pth --output r50.npz

`--input` is a torchvision state dict as .pth (needs torch), .safetensors or .npz.
The output holds `params/...` and `batch_stats/...` (flax paths inside the
backbone) and `__arch__`; `config.model.pretrained` takes it. The report lists the
source keys not used (the ImageNet head, the dropped blocks) and the variables
left at their init (the layers the WSOL variant adds).
"""

import argparse
import sys

from fcam_jax.weights.load import ARCHS, convert_state_dict, save_npz
from fcam_jax.weights.state_dict import PretrainedError, read_state_dict


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m fcam_jax.weights.convert",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--arch", required=True, choices=ARCHS)
  parser.add_argument("--input", required=True, help=".pth, .safetensors or .npz state dict")
  parser.add_argument("--output", required=True, help="the converted .npz")
  args = parser.parse_args(argv)
  if not args.output.endswith(".npz"):
    parser.error("--output must end with .npz")
  try:
    flat, report = convert_state_dict(read_state_dict(args.input), args.arch, args.input)
  except (PretrainedError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  save_npz(args.output, flat, args.arch)
  print(report)
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
