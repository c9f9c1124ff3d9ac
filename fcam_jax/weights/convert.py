"""Converts a torchvision ImageNet checkpoint for a WSOL backbone into a flat .npz.

  python -m fcam_jax.weights.convert --arch resnet50 --input resnet50.pth --output r50.npz

`--input` is a torchvision state dict as .pth (needs torch), .safetensors or .npz.
The output holds `params/...` and `batch_stats/...` (flax paths inside the
backbone) and `__arch__`; `config.model.pretrained` takes it. The report lists the
source keys not used (the ImageNet head, the dropped blocks) and the variables
left at their init (the layers the WSOL variant adds). Bad input ends in one `error:`
line: exit 2 for flags (an --input that is not a file), 1 for a state dict that cannot
be read or does not fit the architecture.
"""

import os
import sys

from fcam_jax import cli
from fcam_jax.weights.load import ARCHS, convert_state_dict, save_npz
from fcam_jax.weights.state_dict import PretrainedError, read_state_dict


def main(argv=None) -> int:
  parser = cli.ArgumentParser(prog="python -m fcam_jax.weights.convert",
                              description=__doc__.split("\n")[0])
  parser.add_argument("--arch", required=True, choices=ARCHS)
  parser.add_argument("--input", required=True, help=".pth, .safetensors or .npz state dict")
  parser.add_argument("--output", required=True, help="the converted .npz")
  cli.add_verbose_flag(parser)
  args = parser.parse_args(argv)
  if not args.output.endswith(".npz"):
    parser.error("--output must end with .npz")
  if not os.path.isfile(args.input):
    parser.error(f"--input={args.input}: no such file")

  def run() -> int:
    flat, report = convert_state_dict(read_state_dict(args.input), args.arch, args.input)
    save_npz(args.output, flat, args.arch)
    print(report)
    print(f"wrote {args.output}")
    return 0

  # An unreadable or mismatched state dict, an unwritable --output.
  return cli.call(run, verbose=args.verbose, data_errors=(PretrainedError, OSError))


if __name__ == "__main__":
  sys.exit(main())
