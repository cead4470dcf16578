"""Host values to the device without waiting for it.

A plain `torch.tensor(values, device=cuda)` (or `.to(cuda)` of pageable memory) copies synchronously: it
waits for everything queued on the stream first, so the host could not prepare the next step while the
device runs this one. Through pinned memory the copy is queued like a kernel (the caching host allocator
keeps the pinned block until the copy has run)."""
from __future__ import annotations

import numpy as np
import torch


def device_tensor(values: list, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A small tensor of host values on `device`."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def device_array(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy array's values on `device` (on a CPU the tensor shares the array's memory)."""
    host = torch.from_numpy(array)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
