r"""Mixed precision on the synthetic recipe: bf16 activations against fp32 run-to-run noise.

  python -m fcam_jax.sweep --config=configs/synthetic.py --sweep=configs/sweeps/half_precision.py \
      --workdir=/tmp/sweep_half_precision

Three full runs (both stages): fp32 with seeds 0 and 1 (their difference is the
run-to-run noise) and `half_precision=True` (bf16 activations, fp32 parameters and
losses) with seed 0: does bf16 move the metrics more than a seed does? Measured on a CPU
(benchmarks/README.md, "Mixed precision", 3 seeds each): bf16 lower by 3-5 points.
"""


def get_sweep(arg=None):
  del arg
  return [
      {"name": "fp32-seed0", "half_precision": False, "seed": 0},
      {"name": "fp32-seed1", "half_precision": False, "seed": 1},
      {"name": "bf16-seed0", "half_precision": True, "seed": 0},
  ]
