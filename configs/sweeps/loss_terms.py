r"""The paper's component ablation: which stage-2 loss terms F-CAM needs.

  python -m fcam_jax.sweep --config=configs/synthetic.py --sweep=configs/sweeps/loss_terms.py \
      --workdir=/tmp/sweep_loss_terms

The classifier is trained once (`<workdir>/classifier`); each variant trains the
decoder on it with the seed loss plus the named terms (`+ CRF`: dense CRF, `+ size`:
the ELB size constraint). Expected on synthetic (README): F-CAM MaxBoxAcc rises with
the CRF term; the size term alone changes little.
"""


def get_sweep(arg=None):
  del arg
  return [
      {"name": "seeds", "fcam.crf.enabled": False, "fcam.size.enabled": False},
      {"name": "seeds+size", "fcam.crf.enabled": False, "fcam.size.enabled": True},
      {"name": "seeds+crf", "fcam.crf.enabled": True, "fcam.size.enabled": False},
      {"name": "seeds+crf+size", "fcam.crf.enabled": True, "fcam.size.enabled": True},
  ]
