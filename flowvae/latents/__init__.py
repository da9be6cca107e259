"""Latent structures of a FlowVAE: none (flow only), global (z), hierarchical (z plus z_l per Glow level).

``build_latents(cfg, image_shape, level_shapes)`` picks one from ``STRUCTURES``; see base.py for the
interface every structure and latent group implements.
"""
from .base import Code, LatentGroup, Latents, NoLatents, Posterior
from .global_code import GlobalCode, GlobalLatents
from .hierarchical import HierarchicalLatents, LevelCode

STRUCTURES = {"none": NoLatents, "global": GlobalLatents, "hierarchical": HierarchicalLatents}


def structure_name(cfg) -> str:
    """The structure a model config asks for: a flow-only Glow has none; a hybrid its ``injection``."""
    return "none" if cfg.type == "glow" else cfg.injection


def latents_class(cfg) -> type:
    return STRUCTURES[structure_name(cfg)]


def build_latents(cfg, image_shape, level_shapes) -> Latents:
    return latents_class(cfg)(cfg, image_shape, level_shapes)


__all__ = ["Code", "Posterior", "LatentGroup", "Latents", "NoLatents", "GlobalCode", "GlobalLatents",
           "LevelCode", "HierarchicalLatents", "STRUCTURES", "build_latents", "latents_class", "structure_name"]
