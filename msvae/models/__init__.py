"""Networks and models: encoders/decoders, stage 1, stage 2, the multi-stage model, training utilities."""
from msvae.models.multistage import MultiStageModel
from msvae.models.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, reparameterize
from msvae.models.stage1 import DisentangledVAE
from msvae.models.stage2 import FlowStage2, RefinementDecoder, SecondStage, VAEStage2, build_stage2

__all__ = ["ConvDecoder", "ConvEncoder", "DisentangledVAE", "FlowStage2", "MLPDecoder", "MLPEncoder",
           "MultiStageModel", "RefinementDecoder", "SecondStage", "VAEStage2", "build_stage2",
           "reparameterize"]
