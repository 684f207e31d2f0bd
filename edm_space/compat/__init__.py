"""Adapters to other people's sampling code: k-diffusion's sampler signature (edm_space.compat.k_diffusion) and
diffusers' scheduler interface (edm_space.compat.diffusers_scheduler)."""
