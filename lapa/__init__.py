"""Latent action pretraining (LAPA) on the magma stack.

- ``quantizer``: the latent action quantizer (LAQ VQ-VAE; ``attention``, ``nsvq``), configured by
  ``config`` (``configs/lapa/lapa-tiny.yaml``, ``lapa-openx.yaml``);
- ``frame_pairs``: frame pairs a window in seconds apart, from videos or LeRobot episodes;
- ``training`` + ``codebook_upkeep``: accelerate training that keeps every code alive, identically
  on every process;
- ``labelling``: latent actions of a corpus as training shards (``data_tools.jobs``);
- ``pipeline``: MuJoCo videos -> quantizer -> labels -> latent VLA (``magma`` trainer) -> robot
  fine-tuning -> success rate vs the same model without latent pretraining;
- ``probe``, ``play_policy``, ``synthetic_motion``: motion whose truth is known, to check the codes.

Imports flow ``data_tools <- envs <- magma <- lapa``; importing this package imports nothing heavy.
"""
