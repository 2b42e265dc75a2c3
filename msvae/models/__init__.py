"""Networks and models: encoders/decoders, stage 1, stage 2, the multi-stage model, the tabular
synthesizer, training utilities."""
from msvae.models.multistage import MultiStageModel
from msvae.models.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, reparameterize
from msvae.models.stage1 import DisentangledVAE
from msvae.models.stage2 import (FlowStage2, GANStage2, MixtureStage2, RefinementDecoder, SecondStage, VAEStage2,
                                  build_stage2)
from msvae.models.tabular import (MixedLikelihood, TabularFlowStage2, TabularMixtureStage2,
                                  TabularSynthesizer, TabularVAEStage2)

__all__ = ["ConvDecoder", "ConvEncoder", "DisentangledVAE", "FlowStage2", "GANStage2", "MLPDecoder", "MLPEncoder",
           "MixedLikelihood", "MixtureStage2", "MultiStageModel", "RefinementDecoder", "SecondStage",
           "TabularFlowStage2", "TabularMixtureStage2", "TabularSynthesizer", "TabularVAEStage2",
           "VAEStage2", "build_stage2", "reparameterize"]
