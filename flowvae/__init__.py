"""flowvae: hybrid VAE / normalizing-flow image models with exact flow likelihoods.

    from flowvae import FlowVAE, load_config, load_checkpoint
"""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, ConfigError, load_config
from .model import FlowVAE

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "FlowVAE", "load_checkpoint", "load_config", "save_checkpoint"]
