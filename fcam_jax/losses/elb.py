"""Extended log-barrier (Kervadec et al.) and the F-CAM size constraint (docs/design.md §6).

For a constraint z <= 0:

  psi_t(z) = -log(-z) / t                      if z <= -1/t^2
             t z - log(1/t^2) / t + 1/t        otherwise

continuous with a continuous derivative at z = -1/t^2. `t` may be a traced scalar (it is
training state: it starts at 1 and grows by `mult` after every epoch, up to `t_max`).
"""

import jax.numpy as jnp


def elb(z, t):
  """psi_t(z), element-wise."""
  z = jnp.asarray(z, jnp.float32)
  t = jnp.asarray(t, jnp.float32)
  switch = -1.0 / (t * t)
  barrier = z <= switch
  # Keep the log's argument positive in the unused branch, so its gradient stays finite.
  log_term = -jnp.log(-jnp.where(barrier, z, switch)) / t
  linear = t * z - jnp.log(1.0 / (t * t)) / t + 1.0 / t
  return jnp.where(barrier, log_term, linear)


def size_loss(probs, t):
  """0.5 (mean_b psi_t(-sum S_bg) + mean_b psi_t(-sum S_fg)) for probs (B,H,W,2).

  Each region must not be empty: -(its total probability) <= 0, per image.
  """
  area = jnp.sum(probs.astype(jnp.float32), axis=(1, 2))  # (B, 2): background, foreground
  return 0.5 * (jnp.mean(elb(-area[:, 0], t)) + jnp.mean(elb(-area[:, 1], t)))


def next_t(t, mult: float = 1.01, t_max: float = 10.0):
  """The ELB t of the next epoch."""
  return jnp.minimum(jnp.asarray(t, jnp.float32) * mult, t_max)
