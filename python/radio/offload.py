"""``radio.quantize(..., offload=True)``: calibrate a model bigger than the GPU (issue 7, item 1).

The weights stay in host memory and PyTorch's FSDP2 streams them to the GPU block by block:
``fully_shard(block, offload_policy=CPUOffloadPolicy(...))`` on every decoder block,
and once more on the root (the module the calibration calls: ``base_model`` of a transformers
causal LM, holding the embeddings and the final norm). Before a block's forward FSDP copies its
parameters to the GPU ("all-gather" of one shard: the whole tensor at one rank), frees the copy
after the forward, copies them again for the block's backward and frees them after it; the next
block is prefetched while one computes. The GPU therefore holds a few blocks, the root's
parameters, the activations and radio's per-group statistics (~1/256 of the weights). Nothing
here schedules copies by hand.

The layer probes (``sensitivity.LayerProbe``) own the layer's ORIGINAL weight as a parameter, so
that FSDP manages (streams) it, and compute the working (quantized) weight from it on the device
(``LayerState.recipe``, set by each round's ``requantize``). The session's originals are FSDP's
host storage (``local_weight``: the whole tensor with one rank, this rank's block of rows
with several); ``on_wrapped`` lets the caller drop the model's own copy unit by unit.

Pinning: FSDP's own ``pin_memory=True`` takes its pinned copies from PyTorch's caching host
allocator, which rounds every request up to a power of two (torch 2.15 by default: a 135 MiB
13824 x 5120 fp16 matrix takes 256 MiB, a 50 MiB 5120 x 5120 one 64 MiB: 1.7x over a Llama
block) and keeps freed blocks cached after the run. So FSDP is asked for pageable host copies
(``pin_memory=False``, exact sizes) and ``HostPinning`` page-locks each one in place with
``cudaHostRegister`` (and unregisters it when the wrapping is removed): the copies to the GPU
still run asynchronously from page-locked memory (``tensor.is_pinned()`` is True), and the host
holds each weight once, at its size.

Process group: FSDP needs one. Without an initialised ``torch.distributed``, a 1-rank group is
created here (NCCL on a GPU, gloo for the CPU test device) and destroyed at the end. Under
``torchrun`` the mesh is the default group: FSDP shards every streamed parameter's rows ACROSS
the ranks (rank ``r`` holds rows ``[r c, (r + 1) c)``, ``c = ceil(rows / world)``), so each
rank's host holds ~1/world of every original. The forward and backward passes then all-gather
(collectives: the caller runs the same passes on every rank), and whatever needs a whole
original gathers it (``radio.distributed.gather_rows``).

Host memory: one copy of every streamed weight: FSDP's host storage (page-locked in place; for
the quantized layers also the session's original and the replaced ``nn.Linear``'s weight). The
model's own copy of the other streamed parameters (the root's embeddings and norms) is freed
while FSDP holds its copy (``_free_own_copies``: storages of >= 1 MiB of one parameter alone)
and refilled by ``close``. In the final round each original is freed in place
(``free_host_storage``) as soon as its packed layer has replaced it in the model, so the packed
layers never come on top of every original. See docs/design.md ("Offload") for the arithmetic
and the failure contract that follows.

At the end the FSDP wrapping is removed: hooks, the FSDP classes and state go, the model's
original parameter objects (never moved; refilled where freed, gathered from every rank) and
buffers (moved back) are put back (the quantized layers' originals stay in FSDP's former
storage). With several ranks ``close`` is a collective too.
"""
from __future__ import annotations

import gc
import importlib
import os
import shutil
import tempfile
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["compute_device", "check_streamable", "HostPinning", "StreamedModel"]

OffloadArg = Union[bool, str, torch.device]


def compute_device(offload: OffloadArg) -> torch.device:
    """The device the streamed blocks compute on: ``True`` -> the current CUDA device; a device
    (``"cuda:1"``; ``"cpu"`` runs the same FSDP machinery without a GPU, for tests)."""
    if offload is True:
        if not torch.cuda.is_available():
            raise ValueError("offload=True streams the weights from host memory to a CUDA GPU, "
                             "but torch.cuda.is_available() is False; expected a machine with a "
                             "GPU (or offload=False)")
        return torch.device("cuda", torch.cuda.current_device())
    try:
        device = torch.device(offload)
    except (TypeError, RuntimeError) as error:
        raise ValueError(f"offload must be True, False or a device such as 'cuda:0', got "
                         f"{offload!r}") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"offload={offload!r} names a CUDA device, but "
                             "torch.cuda.is_available() is False")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise ValueError(f"offload={offload!r}: expected a CUDA device (or 'cpu' for tests)")
    return device


def check_streamable(model: nn.Module, root: nn.Module,
                     blocks: Optional[nn.ModuleList]) -> None:
    """The model must be in host memory and have decoder blocks inside ``root``."""
    if blocks is None or len(blocks) == 0:
        raise ValueError(f"offload=True streams the decoder blocks one by one, but "
                         f"{type(model).__name__} has none; expected an nn.ModuleList of blocks "
                         "holding nn.Linear layers (a transformers causal LM)")
    if not any(m is blocks for m in root.modules()):
        raise ValueError(f"offload=True: the decoder blocks are not inside the module the "
                         f"calibration calls ({type(root).__name__}); expected them there")
    bad = sorted({str(p.device) for p in model.parameters() if p.device.type != "cpu"})
    if bad:
        raise ValueError(f"offload=True expects the model in host memory (built or loaded on the "
                         f"CPU, since it need not fit the GPU), got parameters on {bad}; move it "
                         "with model.cpu(), or use offload=False")


def _fsdp():
    if not torch.distributed.is_available():
        raise ValueError("offload=True needs torch.distributed (FSDP2), which this torch build "
                         "lacks")
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard
    return fully_shard, CPUOffloadPolicy, FSDPModule


class HostPinning:
    """Page-locks host tensors in place and undoes it: the bookkeeping of ``cudaHostRegister``.

    ``add(tensor)`` registers the tensor's whole storage once (storages shared by several
    tensors, such as tied weights, are registered once) and keeps a reference to it, so that the
    memory cannot be freed while registered; ``release()`` unregisters every storage (newest
    first) and lets go of them. Storages below ``min_bytes`` stay pageable: their copies are
    tiny, and small tensors share pages with other allocations (the driver refuses to register
    a page twice). ``register(ptr, nbytes)`` / ``unregister(ptr)`` return True on success; the
    defaults call the CUDA runtime, tests pass fakes. A storage the driver refuses stays
    pageable (still correct, copied synchronously) and is reported in one warning.
    """

    def __init__(self, register: Optional[Callable[[int, int], bool]] = None,
                 unregister: Optional[Callable[[int], bool]] = None,
                 min_bytes: int = 1 << 20) -> None:
        if min_bytes < 0:
            raise ValueError(f"min_bytes must be >= 0, got {min_bytes}")
        self._register = register if register is not None else _cuda_host_register
        self._unregister = unregister if unregister is not None else _cuda_host_unregister
        self.min_bytes = min_bytes
        self._pinned: Dict[int, torch.UntypedStorage] = {}  # data_ptr -> storage (kept alive)
        self.refused: List[Tuple[int, int]] = []  # (ptr, nbytes) the driver did not register

    @property
    def pinned_bytes(self) -> int:
        return sum(s.nbytes() for s in self._pinned.values())

    def __len__(self) -> int:
        return len(self._pinned)

    def add(self, tensor: torch.Tensor) -> bool:
        """Page-lock ``tensor``'s storage; True when it is (now or already) registered here."""
        if tensor.device.type != "cpu":
            raise ValueError(f"HostPinning.add expects a host tensor, got one on "
                             f"{tensor.device}")
        storage = tensor.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if ptr in self._pinned:
            return True
        if nbytes < self.min_bytes or nbytes == 0:
            return False
        if not self._register(ptr, nbytes):
            self.refused.append((ptr, nbytes))
            return False
        self._pinned[ptr] = storage
        return True

    def discard(self, tensor: torch.Tensor) -> bool:
        """Unregister ``tensor``'s storage (before it is freed); False when it was not
        registered here."""
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if self._pinned.pop(ptr, None) is None:
            return False
        if not self._unregister(ptr):
            warnings.warn("radio offload: cudaHostUnregister failed for a host buffer of "
                          f"{storage.nbytes()} bytes", RuntimeWarning, stacklevel=2)
        return True

    def release(self) -> None:
        """Unregister everything (idempotent); the storages become ordinary pageable memory."""
        failed = 0
        while self._pinned:
            ptr, _ = self._pinned.popitem()  # newest first
            if not self._unregister(ptr):
                failed += 1
        if failed:
            warnings.warn(f"radio offload: cudaHostUnregister failed for {failed} host "
                          "buffers", RuntimeWarning, stacklevel=2)

    def warn_refused(self) -> None:
        if self.refused:
            total = sum(n for _, n in self.refused) / (1 << 20)
            warnings.warn(f"radio offload: cudaHostRegister refused {len(self.refused)} host "
                          f"buffers ({total:.1f} MiB); they stay pageable (copied to the GPU "
                          "synchronously, slower)", RuntimeWarning, stacklevel=2)
            self.refused = []


def default_pinning(device: torch.device) -> Optional[HostPinning]:
    """Page-locking with the CUDA runtime on a GPU; none for the CPU test device."""
    return HostPinning() if device.type == "cuda" else None


def _cuda_host_register(ptr: int, nbytes: int) -> bool:
    cudart = torch.cuda.cudart()
    # flags 0 (cudaHostRegisterDefault): page-locked, usable by the current device's copies
    return cudart.cudaHostRegister(ptr, nbytes, 0) == cudart.cudaError.success


def _cuda_host_unregister(ptr: int) -> bool:
    cudart = torch.cuda.cudart()
    return cudart.cudaHostUnregister(ptr) == cudart.cudaError.success


class StreamedModel:
    """FSDP2 wrapping of a model for one ``radio.quantize`` call; ``close()`` removes it."""

    def __init__(self, model: nn.Module, root: nn.Module, blocks: nn.ModuleList,
                 probes: Sequence[nn.Module], device: torch.device,
                 on_wrapped: Optional[Callable[[nn.Module], None]] = None,
                 pinning: Optional[HostPinning] = None) -> None:
        """``pinning``: page-locks FSDP's host copies (default: ``default_pinning(device)``;
        tests pass one with a fake registrar)."""
        fully_shard, cpu_offload, self._fsdp_module = _fsdp()
        self.device = device
        self.pinning = pinning if pinning is not None else default_pinning(device)
        self._created_dir: Optional[str] = None
        self.units: List[nn.Module] = []
        # (module, name, the model's own parameter) of every parameter FSDP will replace
        self._params: List[Tuple[nn.Module, str, nn.Parameter]] = []
        self._buffers: List[Tuple[torch.Tensor, torch.device]] = []
        # The model's own parameters whose host memory is freed while FSDP holds their copy:
        # (own parameter, its storage's bytes, FSDP's local shard), refilled by ``close``.
        self._freed: List[Tuple[nn.Parameter, int, torch.Tensor]] = []
        self.world = 1  # ranks the weights are sharded over (one mesh over the default group)
        try:
            group = self._process_group(device)
            self.world = torch.distributed.get_world_size(group)
            from torch.distributed.device_mesh import DeviceMesh
            mesh = DeviceMesh.from_group(group, device.type)
            root_modules = set(map(id, root.modules()))
            outside = [p for p in probes if id(p) not in root_modules]  # the LM head's probe
            freeable = _unshared_parameters(model)
            self._take_parameters(list(root.modules()) + outside, probes)
            # Pageable host copies of exact size, page-locked in place below (module docstring:
            # FSDP's own pinning rounds every tensor up to a power of two).
            policy = cpu_offload(pin_memory=False)
            # ``on_wrapped(unit)`` right after each unit: the caller can let go of the unit's
            # host tensors that FSDP has just copied, one unit at a time.
            for unit in [*blocks, *outside, root]:
                fully_shard(unit, mesh=mesh, reshard_after_forward=True, offload_policy=policy)
                self.units.append(unit)
                if self.pinning is not None:
                    for p in unit.parameters():  # the root's include the blocks': added once
                        self.pinning.add(self.local_weight(p))
                if on_wrapped is not None:
                    on_wrapped(unit)
            if self.pinning is not None:
                self.pinning.warn_refused()
            # Copy block i+1 to the GPU while block i computes (backward prefetch is FSDP's
            # default).
            for current, following in zip(blocks, list(blocks)[1:]):
                current.set_modules_to_forward_prefetch([following])
            self._free_own_copies(freeable)
        except BaseException:
            self.close()
            raise

    # -- setup ------------------------------------------------------------------------------------
    def _process_group(self, device: torch.device):
        """The default group (created here, 1 rank, when there is none): FSDP shards every
        streamed parameter's rows over all its ranks."""
        dist = torch.distributed
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            self._created_dir = tempfile.mkdtemp(prefix="radio-offload-")
            dist.init_process_group(backend, rank=0, world_size=1, init_method="file://" +
                                    os.path.join(self._created_dir, "store"))
            return dist.group.WORLD
        have = str(dist.get_backend()).lower()
        if dist.get_world_size() > 1 and backend not in have:
            raise ValueError(f"offload on {device} shards the weights over the default process "
                             f"group, whose backend is {have!r}; expected {backend!r} (NCCL "
                             "for CUDA devices, gloo for the CPU test device)")
        return dist.group.WORLD

    def _take_parameters(self, modules: Sequence[nn.Module], probes: Sequence[nn.Module]) -> None:
        """Give FSDP stand-in parameter objects sharing the model's storage: FSDP moves what it
        is given to the device (``param.data = ...``) before copying it to pinned host memory,
        and the model's own objects must stay untouched on the CPU (a failed run restores them;
        the session holds them). The probes' working weights are already stand-ins."""
        probe_ids = set(map(id, probes))
        fresh: Dict[int, nn.Parameter] = {}  # one stand-in per parameter: tied weights stay tied
        seen = set()
        for module in modules:
            if id(module) in seen:
                continue
            seen.add(id(module))
            for name, buf in module._buffers.items():
                if buf is not None:
                    self._buffers.append((buf, buf.device))
            if id(module) in probe_ids:
                continue
            for name, p in list(module._parameters.items()):
                if p is None:
                    continue
                if id(p) not in fresh:
                    fresh[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
                self._params.append((module, name, p))
                module._parameters[name] = fresh[id(p)]

    def _free_own_copies(self, freeable: Dict[int, int]) -> None:
        """Free the host memory of the model's own copy of every parameter FSDP now holds a
        copy of (the embeddings, norms: the quantized layers' own copies are let go by the
        caller), so that the host holds each once; ``close`` puts the values back. Only
        storages that are the parameter's alone and resizable (``freeable``: storage pointer
        -> bytes, from ``_unshared_parameters``) and of at least 1 MiB."""
        seen = set()
        for module, name, own in self._params:
            ptr = own.untyped_storage().data_ptr()
            if id(own) in seen or freeable.get(ptr, 0) < (1 << 20):
                continue
            seen.add(id(own))
            local = self.local_weight(module._parameters[name])
            if local.untyped_storage().data_ptr() == ptr:
                continue  # (FSDP copies; were it to alias, there is nothing to free)
            self._freed.append((own, freeable[ptr], local))
            own.untyped_storage().resize_(0)

    def _refill_own_copies(self) -> None:
        """Put the values of the parameters freed by ``_free_own_copies`` back into the model's
        own storage (FSDP's row shards gathered from every rank: a collective)."""
        from . import distributed
        while self._freed:
            own, nbytes, local = self._freed.pop(0)
            full = distributed.gather_rows(local, own.shape[0]) if own.dim() else local
            own.untyped_storage().resize_(nbytes)
            with torch.no_grad():
                own.copy_(full.reshape(own.shape))
            del full, local

    # -- during the run ---------------------------------------------------------------------------
    @staticmethod
    def local_weight(param: torch.Tensor) -> torch.Tensor:
        """The host storage FSDP streams a parameter from, to be read or overwritten in place:
        its local row shard (rows ``[r c, (r + 1) c)`` of rank ``r``, ``c = ceil(rows /
        world)``, possibly fewer or none at the last ranks; the whole tensor with one rank)."""
        local = param.to_local() if hasattr(param, "to_local") else param
        if tuple(local.shape[1:]) != tuple(param.shape[1:]) or local.shape[:1] > param.shape[:1]:
            raise RuntimeError(f"offload: the local shard {tuple(local.shape)} is not a block of "
                               f"rows of the parameter {tuple(param.shape)}")
        return local

    def free_host_storage(self, tensor: torch.Tensor) -> None:
        """Free the host memory of a streamed parameter's local storage now (``tensor``: its
        ``local_weight``), unpinning it first; the storage is left with 0 bytes. Only once
        nothing will stream or read that parameter again (the final round, after the last
        forward); radio's own references go, but FSDP keeps its own until ``close``, so freeing
        in place is what returns the memory one layer at a time."""
        if tensor.device.type != "cpu":
            raise ValueError(f"free_host_storage expects a host tensor, got one on "
                             f"{tensor.device}")
        if self.pinning is not None:
            if self.device.type == "cuda":  # no copy may still read what is unregistered
                torch.cuda.synchronize(self.device)
            self.pinning.discard(tensor)
        tensor.untyped_storage().resize_(0)

    # -- teardown ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove the FSDP wrapping (idempotent): every wrapped module gets back its class, loses
        FSDP's hooks and state, and the model's own parameters and buffers are put back."""
        for unit in reversed(self.units):
            if not isinstance(unit, self._fsdp_module):
                continue
            unit.reshard()  # the root stays gathered after a no-grad forward
            state = unit._get_fsdp_state()
            for key in ("_pre_forward_hook_handle", "_post_forward_hook_handle"):
                handle = getattr(state, key, None)
                if handle is not None:
                    handle.remove()
            unit.__class__ = next(b for b in type(unit).__bases__
                                  if not issubclass(b, self._fsdp_module))
            _forget_composable_state(unit)
        self.units = []
        self._refill_own_copies()
        for module, name, p in self._params:
            module._parameters[name] = p
        self._params = []
        for buf, device in self._buffers:
            if buf.device != device:
                buf.data = buf.data.to(device)
        self._buffers = []
        if self.pinning is not None:
            if self.device.type == "cuda":  # no copy may still read what is unregistered
                torch.cuda.synchronize(self.device)
            self.pinning.release()
        gc.collect()  # FSDP's state and modules refer to each other: free the pinned copies now
        dist = torch.distributed
        if self._created_dir is not None:
            if dist.is_initialized():
                dist.destroy_process_group()
            shutil.rmtree(self._created_dir, ignore_errors=True)
            self._created_dir = None


def _unshared_parameters(model: nn.Module) -> Dict[int, int]:
    """Storage pointer -> bytes of every parameter storage of ``model`` that one parameter
    slot alone refers to (no tied weight, no view of another tensor, no buffer), that covers
    exactly its parameter and that can be resized: those the model's copy can be freed of."""
    slots: Dict[int, int] = {}
    owners: Dict[int, torch.Tensor] = {}
    for _, t in [*model.named_parameters(remove_duplicate=False),
                 *model.named_buffers(remove_duplicate=False)]:
        ptr = t.untyped_storage().data_ptr()
        slots[ptr] = slots.get(ptr, 0) + 1
        owners[ptr] = t
    out = {}
    for ptr, count in slots.items():
        t = owners[ptr]
        storage = t.untyped_storage()
        if (count == 1 and isinstance(t, nn.Parameter) and t.device.type == "cpu"
                and storage.resizable() and t.storage_offset() == 0 and t.is_contiguous()
                and storage.nbytes() == t.numel() * t.element_size()):
            out[ptr] = storage.nbytes()
    return out


def _forget_composable_state(module: nn.Module) -> None:
    """Drop what ``fully_shard`` recorded on the module, so that it can be wrapped again."""
    try:  # (the package re-exports the function ``contract`` under the module's name)
        _contract = importlib.import_module("torch.distributed._composable.contract")
        _composable_state = importlib.import_module("torch.distributed._composable_state")
    except ImportError:  # pragma: no cover - layout of other torch versions
        return
    for key in ("STATE_KEY", "REGISTRY_KEY"):
        name = getattr(_contract, key, None)
        if name is not None:
            module.__dict__.pop(name, None)
    mapping = getattr(_composable_state, "_module_state_mapping", None)
    if mapping is not None:
        mapping.pop(module, None)
