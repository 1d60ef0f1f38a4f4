"""Test-session set-up that must happen before triton is imported anywhere."""
import os

import pytest
import torch

# Without a GPU the Triton kernels run in the interpreter. The variable is read when triton is imported, so it is
# set here, before any test module imports vitzoo.ops. Ops still dispatch to their PyTorch references on CPU
# unless a test selects the 'triton' backend, so this changes nothing for the other tests.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _restore_kernel_backend():
    """Tests switch the kernel backend with ``vitzoo.ops.set_backend``; each test starts from the session's."""
    from vitzoo.ops import get_backend, set_backend

    previous = get_backend()
    yield
    set_backend(previous)


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one AcceleratorState per process; in-process runs with other settings need a fresh one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
