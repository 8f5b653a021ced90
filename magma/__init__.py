"""The Magma-style vision-language-action model: config, ConvNeXt vision tower, projector,
multi-crop processor, action codecs, checkpoints (own format and the public Magma-8B layout),
and later training, ``rl/`` (the GRPO core), policies and the ``agent`` command line.

Kept import-light on purpose: ``envs`` imports ``magma.actions`` (pure Python/numpy), so nothing
here pulls in torch. Import the model pieces from their modules, e.g. ``magma.model``. Importing
``magma`` makes transformers' ``AutoConfig``, ``AutoModelForCausalLM`` and ``AutoProcessor`` open Magma
checkpoints (``magma.auto_registration``), without importing transformers until they are used.
"""

from magma.auto_registration import install as _install_auto_registration

__version__ = "0.1.0"

_install_auto_registration()
