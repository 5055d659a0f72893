"""The reference code's noise stream (``score.noise_stream=reference``): which tensors it draws, in which order.

The official flatness (GeNAS ``evolution_search/metrics/tester_wlm.py``, ``get_cand_wlm``) deep-copies the whole
supernet and, for each sigma, calls ``torch.normal(0, std, size=param.size())`` on the global CPU generator for
every ``named_parameters()`` entry of the copy, then ``add_``s it. To give the path the same numbers, the scorer
draws the same sequence of tensors from a generator seeded by ``score.seed`` (the reference's
``torch.manual_seed(seed)``) and keeps the draws of the path's parameters; the others are drawn and discarded.

The sequence is the reference supernet's ``named_parameters()``:

* DARTS (GeNAS ``super_model.Network``): stem, then per cell ``preprocess0``, ``preprocess1`` and the 14 MixedOps
  with their 8 primitives in ``PRIMITIVES`` order, then the classifier. Our DARTS supernet registers the same
  modules in the same order (a reference checkpoint loads key for key), so the sequence is our
  ``named_parameters()``, provided the supernet has the reference's tensors: ``pool_bn=true`` (the BatchNorm
  after each pooling op) and ``affine=true``.
* NAS-Bench-201 (RLNAS / AutoDL ``TinyNetworkSPOS``): its own ``arch_parameters`` (num_edges x num_ops, registered
  on the network itself, so first), then stem, cells (edges ``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``, ops in
  ``OP_NAMES`` order; ResNet blocks ``conv_a, conv_b, downsample``), ``lastact`` and the classifier: an unused
  (6, 5) draw, then our ``named_parameters()`` with ``affine=false`` (RLNAS cell BNs have no scale / shift).
"""
from __future__ import annotations

from torch import nn

from genas.spaces.base import Supernet
from genas.spaces.nb201.ops import OP_NAMES
from genas.spaces.nb201.space import EDGES

__all__ = ["reference_noise_layout"]

# Supernet options the reference's parameter list needs, per space: (option, value, why).
_REFERENCE_OPTIONS = {
    "darts": (("pool_bn", True, "the reference MixedOp has a BatchNorm after each pooling op"),
              ("affine", True, "the reference's cell BNs have a scale and shift")),
    "nb201": (("affine", False, "RLNAS's cell BNs have no scale and shift"),),
}


def _option(supernet: Supernet, option: str) -> bool | None:
    """A supernet option, read from the supernet (DARTS keeps no ``affine`` flag: its BNs tell)."""
    if hasattr(supernet, option):
        return bool(getattr(supernet, option))
    if option == "affine":
        return all(m.affine for m in supernet.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    return None


def reference_noise_layout(supernet: Supernet) -> list[tuple[str | None, tuple[int, ...]]]:
    """``(parameter name or None, shape)`` of every draw the reference makes per sigma, in its order; None
    marks a reference tensor this supernet does not have (drawn and discarded). ``ValueError`` when the
    supernet lacks tensors of the reference supernet (the stream would shift), naming the option to set."""
    space = supernet.space.name
    if space not in _REFERENCE_OPTIONS:
        raise ValueError(f"score.noise_stream=reference: no reference parameter order is known for the {space} "
                         f"space (known: {sorted(_REFERENCE_OPTIONS)})")
    for option, value, why in _REFERENCE_OPTIONS[space]:
        if _option(supernet, option) is not value:
            raise ValueError(f"score.noise_stream=reference draws over the reference {space} supernet's parameters: "
                             f"set supernet.{option}={str(value).lower()} ({why})")
    layout: list[tuple[str | None, tuple[int, ...]]] = []
    if space == "nb201":
        layout.append((None, (len(EDGES), len(OP_NAMES))))  # RLNAS arch_parameters
    layout += [(name, tuple(p.shape)) for name, p in supernet.named_parameters()]
    return layout
