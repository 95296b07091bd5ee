"""Environment decided before JAX, transformers or gcsfs start: quiet start-up on machines without a TPU, and every
gs:// client pointed at a GCS emulator when `STORAGE_EMULATOR_HOST` names one.

Called once when `dashjax` is imported. Only unset variables are filled in, so a user's own settings always win.
"""

from __future__ import annotations

import glob
import os

GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips are Google PCI devices; JAX's own TPU detection reads the same files


def tpu_may_be_present() -> bool:
  """True unless this machine certainly has no TPU chip: no Google PCI device, no /dev/accel*, no /dev/vfio."""
  if glob.glob("/dev/accel*") or os.path.exists("/dev/vfio"):
    return True
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor) as f:
        if f.read().strip() == GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def configure(environ=os.environ) -> None:
  # libtpu (installed for `dashjax-fit --topology` or by `jax[tpu]`) prints start-up errors on a machine without a
  # TPU unless it is told it is a one-host slice; on a real TPU VM nothing here is touched.
  if not tpu_may_be_present():
    environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    environ.setdefault("TPU_HOST_BOUNDS", "1,1,1")
  # transformers announces at import that PyTorch is missing; dashjax never uses PyTorch models.
  environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  emulator = environ.get("STORAGE_EMULATOR_HOST", "")
  if emulator and emulator != "default":
    url = emulator if emulator.startswith(("http://", "https://")) else f"http://{emulator}"
    environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)  # Orbax's array writes (tensorstore) ignore the variable
    # An emulator has no storage-control API (bucket layouts) and needs no credentials.
    environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # tensorstore: skip the credentials search
