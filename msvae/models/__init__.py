"""Networks and models: encoders/decoders, the stage-1 disentangled VAE, training utilities."""
from msvae.models.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, reparameterize
from msvae.models.stage1 import DisentangledVAE

__all__ = ["ConvDecoder", "ConvEncoder", "DisentangledVAE", "MLPDecoder", "MLPEncoder", "reparameterize"]
