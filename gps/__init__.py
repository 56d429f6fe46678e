"""Guided Policy Search, from scratch: batched KL-constrained LQR and dynamics fitting on torch.

The trajectory-optimisation machinery of Levine & Abbeel (2014) and Levine et al. (2016), written
to solve every condition (training objective) at once, on the GPU where one is present.
"""
