"""Models and samplers from other codebases: diffusers import/export (edm_space.interop.diffusers_import,
edm_space.interop.diffusers_export) and the scheduler-to-formulation map they share (edm_space.interop.schedulers)."""
