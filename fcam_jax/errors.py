"""Errors raised below the config layer that commands report in one line."""


class ConfigError(ValueError):
  """A bad config value; the message names the key (`config.a.b`)."""
