"""Latent action pretraining (LAPA): a VQ-VAE that learns discrete latent actions between video
frames, latent labelling of video, latent-VLA pretraining on ``magma``, and fine-tuning from
latent to real robot actions. Not built yet (issue [6/7])."""
