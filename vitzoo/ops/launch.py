"""Eager launches of Triton kernels with a fraction of ``kernel[grid](...)``'s host work.

Every ``kernel[grid](*args, **constexprs)`` call goes through Triton's ``JITFunction.run``: it binds each argument,
works out its specialisation (a tensor's dtype and 16-byte alignment, whether an int is 1 or divisible by 16), builds
and looks up the cache key, reads its knobs, and only then launches. On an H100 host that took 28 us for the
linear-attention forward (41 runtime arguments, 19 constexprs) against 9 us for an empty kernel, and the eager models
launch 25-75 such kernels per forward. The ops launch the same few configurations over and over, so
:class:`CachedLauncher` keeps, per call signature, the compiled kernel Triton launched the first time and launches it
directly afterwards.

The signature is finer than Triton's specialisation, so a cached launch runs the binary Triton itself would pick:
the current device, every keyword (constexprs and launch options such as ``num_warps``) by value, every int argument
by value, every tensor by dtype and 16-byte alignment of its address, other arguments by type and value (floats by
type only: Triton passes them as fp32 runtime values). Triton's own path runs whenever a launch hook is installed
(profilers such as proton read it), the grid is a callable, a keyword names a runtime argument, or the kernels run
in the interpreter.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .utils import get_backend, interpreting, triton_available

if triton_available():
    from triton import knobs as _knobs


class CachedLauncher:
    """``launcher[grid](*args, **kwargs)`` launches the Triton ``kernel`` as ``kernel[grid](*args, **kwargs)``
    would, from a cache of compiled kernels keyed by the call signature (see the module docstring)."""

    def __init__(self, kernel: Any, current_device: Callable[[], int] = torch.cuda.current_device,
                 current_stream: Callable[[int], int] | None = None) -> None:
        """``current_device`` and ``current_stream`` (device index -> raw stream) default to what Triton itself
        asks (the latter bound at the first launch: it needs the CUDA driver)."""
        self.kernel = kernel
        self._device = current_device
        params = kernel.params
        self._names = tuple(p.name for p in params)
        self._constexpr = frozenset(p.name for p in params if p.is_constexpr)
        self._defaults = {p.name: p.default for p in params if p.has_default}
        self._cache: dict[tuple, tuple] = {}
        self._stream = current_stream

    @staticmethod
    def _key(device: int, args: tuple, kwargs: dict[str, Any]) -> tuple:
        return (device, *kwargs.items(), *[
            a if a.__class__ is int
            else (a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor)
            else (float, None) if a.__class__ is float
            else (a.__class__, a)
            for a in args])

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def launch(self, grid: tuple[int, ...], args: tuple, kwargs: dict[str, Any]) -> None:
        device = self._device()
        key = self._key(device, args, kwargs)
        entry = self._cache.get(key)
        if entry is None or grid.__class__ is not tuple or _hooks_installed():
            self._launch_through_triton(key, grid, args, kwargs)
            return
        run, function, metadata, tail = entry
        run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1, self._stream(device),
            function, metadata, None, None, None, *args, *tail)

    def bind(self, grid: tuple[int, ...], args: tuple, kwargs: dict[str, Any]) -> Callable[..., None]:
        """Launch ``kernel[grid](*args, **kwargs)`` and return ``bound``: ``bound(*other_args)`` repeats this launch
        (grid, keywords, device and compiled kernel) with other runtime arguments without working out their
        signature. For an op whose own key already pins everything the signature reads (every int argument, every
        tensor's dtype and 16-byte alignment) and that launches with that key many times; the op's key is what keeps
        it right. Launch hooks, another current device, or a launch Triton's path must take, go through
        :meth:`launch`."""
        self.launch(grid, args, kwargs)
        device = self._device()
        entry = self._cache.get(self._key(device, args, kwargs))
        if entry is None or grid.__class__ is not tuple:
            return lambda *other: self.launch(grid, other, kwargs)
        run, function, metadata, tail = entry
        dims = (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)

        def bound(*other: Any) -> None:
            if self._device() != device or _hooks_installed():
                self.launch(grid, other, kwargs)
                return
            run(*dims, self._stream(device), function, metadata, None, None, None, *other, *tail)

        return bound

    def _launch_through_triton(self, key: tuple, grid: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        compiled = self.kernel[grid](*args, **kwargs)
        if grid.__class__ is not tuple or _hooks_installed() or not hasattr(compiled, "packed_metadata"):
            return
        tail_names = self._names[len(args):]
        if any(name not in self._constexpr for name in tail_names):
            return  # a runtime argument passed by keyword: its value would be baked into the cached tail
        tail = tuple(kwargs[name] if name in kwargs else self._defaults[name] for name in tail_names)
        if self._stream is None:
            from triton.runtime import driver

            self._stream = driver.active.get_current_stream
        self._cache[key] = (compiled.run, compiled.function, compiled.packed_metadata, tail)


def _hooks_installed() -> bool:
    runtime = _knobs.runtime
    return _active(runtime.launch_enter_hook) or _active(runtime.launch_exit_hook)


def _active(hook: Any) -> bool:
    # a hook is a callable or None (Triton 3.6), or a chain of callables that may be empty (later releases)
    return hook is not None and bool(getattr(hook, "calls", True))


_LAUNCHERS: dict[Any, CachedLauncher] = {}


def cached_launcher(kernel: Any) -> Any:
    """The :class:`CachedLauncher` of a Triton ``kernel`` (one per kernel); the kernel itself under the Triton
    interpreter, which compiles nothing."""
    if interpreting():
        return kernel
    launcher = _LAUNCHERS.get(kernel)
    if launcher is None:
        launcher = _LAUNCHERS[kernel] = CachedLauncher(kernel)
    return launcher


def launcher(kernel: Any, direct_launch: bool) -> Any:
    """What launches a Triton ``kernel`` from an op: its :func:`cached_launcher` for eager callers, ``wrap_triton``
    inside the custom ops that torch.compile traces (outside a custom op, wrap_triton's tracing machinery costs about
    0.5 ms of host time a call on the H200)."""
    return cached_launcher(kernel) if direct_launch else torch.library.wrap_triton(kernel)


def bind_launch(kernel: Any, grid: tuple[int, ...], args: tuple, kwargs: dict[str, Any]) -> Callable[..., None]:
    """Launch ``kernel[grid](*args, **kwargs)`` eagerly and return ``bound``, which repeats that launch with other
    runtime arguments of the same signature (:meth:`CachedLauncher.bind`); under the interpreter ``bound`` is
    Triton's own launch."""
    cached = cached_launcher(kernel)
    if isinstance(cached, CachedLauncher):
        return cached.bind(grid, args, kwargs)
    cached[grid](*args, **kwargs)
    return lambda *other: cached[grid](*other, **kwargs)


def tensor_key(t: torch.Tensor | None) -> tuple | None:
    """What a :class:`KeptLaunches` key takes from a tensor argument: its shape, strides, dtype, device and whether
    its address is 16-byte aligned (what the launches' signatures read of it)."""
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0)


def inference_key(*tensors: torch.Tensor | None, options: tuple = ()) -> tuple | None:
    """The key under which an op keeps the launches of a call (:class:`KeptLaunches`): ``options`` (the op's plain,
    hashable option values), then every tensor's :func:`tensor_key`. None for a call that records a gradient or is
    traced (:func:`eager_inference`), and for arguments that are not tensors (the op's checks name them)."""
    try:
        return (*options, *[tensor_key(t) for t in tensors]) if eager_inference(*tensors) else None
    except AttributeError:
        return None


class KeptLaunches:
    """The launches an op keeps for its eager calls with nothing to differentiate, by the op's own key.

    A model calls each op with the same shapes, strides and options on every forward. The op keys such a call by
    everything its input checks, its choice of path and its launches read (:func:`tensor_key` of each tensor, the
    option values) and keeps a function that repeats the call on other tensors of the same key with bound launches
    (:func:`bind_launch`), so a later call with that key skips the checks, the set-up and the launch signatures
    (host time on every call). At most ``limit`` keys are kept; later ones run the plain path. A change of the
    backend choice (:func:`~vitzoo.ops.set_backend`), which the kept calls no longer ask, drops them all.
    """

    def __init__(self, limit: int = 256) -> None:
        self.launches: dict[tuple, Callable[..., Any]] = {}
        self.limit = limit
        self.backend = get_backend()

    def get(self, key: tuple | None) -> Callable[..., Any] | None:
        """The launch kept under ``key`` for the backend choice in force, or None."""
        if key is None or self.backend != get_backend():
            return None
        return self.launches.get(key)

    def keep(self, key: tuple | None, launch: Callable[..., Any]) -> None:
        """Keep ``launch`` under ``key`` (a None key keeps nothing)."""
        if key is None:
            return
        if self.backend != get_backend():
            self.launches.clear()
            self.backend = get_backend()
        if len(self.launches) < self.limit:
            self.launches[key] = launch


def eager_inference(*tensors: torch.Tensor | None) -> bool:
    """Whether a call is eager (not traced by torch.compile) with no gradient of ``tensors`` to record: it may launch
    its kernels directly, without an autograd function, and keep its launches (:class:`KeptLaunches`)."""
    return not torch.compiler.is_compiling() and not (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))
