"""Metrics on representations ``codes [N, D]``, discrete factors ``[N, K]`` and model outputs.

Supervised disentanglement scores follow disentanglement_lib's definitions (MIG, DCI, SAP,
FactorVAE and BetaVAE scores) on the given rows instead of a simulator; ``mig_chen`` estimates
Chen et al.'s MIG from the posteriors with the fused mixture log-density op. Generative scores
(``frechet_distance``, ``factor_coverage``, ``code_leak``, ``predicted_classes``, ``traversal_fidelity``) are plain
functions of features, predicted factor classes and codes. Inputs may be numpy arrays or tensors.
"""
from msvae.metrics.batch_scores import beta_vae_score, factor_vae_score
from msvae.metrics.disentanglement import dci, dci_completeness, dci_disentanglement, sap
from msvae.metrics.generative import (code_leak, factor_coverage, frechet_distance, predicted_classes,
                                      traversal_fidelity)
from msvae.metrics.information import (discrete_entropy, discrete_mutual_info,
                                       histogram_discretize, mutual_info_matrix)
from msvae.metrics.mig import mig, mig_chen, mig_chen_details, mig_details
from msvae.metrics.unsupervised import gaussian_total_correlation, hoyer_sparsity

__all__ = ["beta_vae_score", "code_leak", "dci", "dci_completeness", "dci_disentanglement",
           "discrete_entropy", "discrete_mutual_info", "factor_coverage", "factor_vae_score",
           "frechet_distance", "gaussian_total_correlation", "histogram_discretize",
           "hoyer_sparsity", "mig", "mig_chen", "mig_chen_details", "mig_details",
           "mutual_info_matrix", "predicted_classes", "sap", "traversal_fidelity"]
