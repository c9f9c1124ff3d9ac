"""What main says about the devices, and the accelerator that JAX does not see."""

import os

from absl import logging
import jax
import pytest

from fcam_jax import devices


def test_describe_names_processes_devices_and_backend():
  text = devices.describe()
  assert f"{jax.device_count()} devices" in text and jax.default_backend() in text
  assert jax.devices()[0].device_kind in text


def test_a_gpu_that_jax_cannot_see_is_said_loudly_or_refused(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  monkeypatch.setattr(devices, "present_accelerator", lambda: "gpu")
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda fmt, *a: warnings.append(fmt % a))
  devices.check()
  assert len(warnings) == 1 and "has a GPU but JAX runs on the CPU" in warnings[0]
  assert "pip install -c constraints.txt -e '.[cuda12]'" in warnings[0]
  with pytest.raises(devices.NoAcceleratorError, match="config.require_accelerator: .*GPU"):
    devices.check(require_accelerator=True)
  monkeypatch.setattr(devices, "present_accelerator", lambda: None)
  warnings.clear()
  devices.check()
  assert not warnings
  with pytest.raises(devices.NoAcceleratorError, match="sees no GPU or TPU"):
    devices.check(require_accelerator=True)


def test_tpu_vm_is_recognized_from_its_environment(monkeypatch):
  monkeypatch.setattr(devices.glob, "glob", lambda pattern: [])
  monkeypatch.setattr(devices.os.path, "exists", lambda path: False)
  monkeypatch.delenv("TPU_NAME", raising=False)
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
  monkeypatch.delenv("TPU_ACCELERATOR_TYPE", raising=False)
  assert devices.present_accelerator() is None
  monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-8")
  assert devices.present_accelerator() == "tpu"


def test_compilation_cache_folder(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert devices.default_cache_dir() == str(tmp_path / "xdg" / "fcam_jax" / "jax")
  assert devices.enable_compilation_cache("") == ""
  blocker = tmp_path / "file"
  blocker.write_text("x")
  assert devices.enable_compilation_cache(str(blocker / "cache")) == ""  # warned, not fatal
  before = jax.config.jax_compilation_cache_dir
  try:
    path = devices.enable_compilation_cache(str(tmp_path / "cache"))
    assert path == str(tmp_path / "cache") and os.path.isdir(path)
    assert jax.config.jax_compilation_cache_dir == path
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
