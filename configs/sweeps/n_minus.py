r"""n-, the fraction of the lowest-CAM pixels where background seeds are drawn.

  python -m fcam_jax.sweep --config=configs/cub.py --sweep=configs/sweeps/n_minus.py \
      --workdir=$WORK/cub_n_minus

The paper picks n- on val from 0.1..0.7 in steps of 0.1 (docs/design.md §7); each variant trains
the decoder on one shared frozen classifier. `:0.1,0.3` restricts the values.
"""

from fcam_jax import config_lib


def get_sweep(arg=None):
  values = [float(v) for v in arg.split(",")] if arg else [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
  return config_lib.axis("fcam.seeds.n_minus", values)
