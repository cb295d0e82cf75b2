"""Baselines run through the same `Method` interface as ∞-Diff (issue 4: mlp_pixel, simple_diffusion)."""
