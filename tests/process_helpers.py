"""The environment of the subprocesses that tests start (the CLIs, killed runs, two hosts)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_device_env() -> dict:
  """The tests' environment with the package importable and one real CPU device, like a debug run; any
  other XLA flags stay."""
  flags = [flag for flag in os.environ.get('XLA_FLAGS', '').split()
           if not flag.startswith('--xla_force_host_platform_device_count')]
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', XLA_FLAGS=' '.join(flags))
