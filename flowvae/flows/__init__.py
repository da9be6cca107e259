"""Invertible layers. Convention (see base.py): forward = data -> latent, inverse = latent -> data;
both return (output, logdet) with logdet = log|det J| of the map applied, shape [N]."""
from .actnorm import ActNorm, data_dependent_init
from .base import Cond, FlowLayer
from .coupling import AffineCoupling
from .glow import ConditionalGlow, FlowStep
from .invconv import InvConv1x1
from .priors import GaussianizeSplit, GaussianizeTop, standard_normal_logprob
from .squeeze import Squeeze

__all__ = [
    "ActNorm", "AffineCoupling", "Cond", "ConditionalGlow", "FlowLayer", "FlowStep", "GaussianizeSplit",
    "GaussianizeTop", "InvConv1x1", "Squeeze", "data_dependent_init", "standard_normal_logprob",
]
