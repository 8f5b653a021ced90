"""Magma in transformers' Auto classes (``AutoConfig``, ``AutoModelForCausalLM``, ``AutoProcessor``), with
``import magma`` still free of torch.

Registering needs the Magma classes, and they import transformers and torch; ``envs`` imports
``magma.actions`` and must not pay for that. So ``import magma`` calls :func:`install`: each Auto class is
given the Magma classes the moment transformers' module defining it finishes importing (the first use of
``AutoConfig`` and friends), or at once when that module is already imported. The Magma modules
the registrations import call :func:`register_available` when they finish importing too, since
transformers may import its Auto modules while one of them is being imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any


def register_config() -> None:
    from transformers import AutoConfig

    from magma.configuration_magma import MagmaConfig

    AutoConfig.register("magma", MagmaConfig, exist_ok=True)


def register_model() -> None:
    from transformers import AutoModelForCausalLM

    from magma.configuration_magma import MagmaConfig
    from magma.model import MagmaForCausalLM

    AutoModelForCausalLM.register(MagmaConfig, MagmaForCausalLM, exist_ok=True)


def register_processor() -> None:
    from transformers import AutoProcessor

    from magma.configuration_magma import MagmaConfig
    from magma.processor import MagmaProcessor

    AutoProcessor.register(MagmaConfig, MagmaProcessor, exist_ok=True)


# transformers' Auto module -> (the Magma modules its registration imports, how to register)
REGISTRATIONS: dict[str, tuple[tuple[str, ...], Callable[[], None]]] = {
    "transformers.models.auto.configuration_auto": (("magma.configuration_magma",), register_config),
    "transformers.models.auto.modeling_auto": (("magma.configuration_magma", "magma.model"), register_model),
    "transformers.models.auto.processing_auto": (
        ("magma.configuration_magma", "magma.processor"),
        register_processor,
    ),
}
registered: set[str] = set()


def importing(module_name: str) -> bool:
    """The module is being imported right now (a registration would see it half-built)."""
    module = sys.modules.get(module_name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def register_available() -> None:
    """Register with every Auto module transformers has imported, once no transformers module and no Magma
    module that registration needs is mid-import (a registration then would see them half-built): the
    import that completes them calls this again."""
    if any(importing(name) for name in list(sys.modules) if name.partition(".")[0] == "transformers"):
        return
    for auto_module, (magma_modules, register) in REGISTRATIONS.items():
        if auto_module in registered or auto_module not in sys.modules:
            continue
        if any(importing(name) for name in magma_modules):
            continue
        try:
            register()
        except Exception as error:  # an incompatible transformers must not break `import transformers` itself
            warnings.warn(
                f"Magma could not register with transformers' {auto_module} ({type(error).__name__}: {error}); "
                "the Auto classes will not open Magma checkpoints: use magma.model.MagmaForCausalLM and "
                "magma.processor.MagmaProcessor directly",
                stacklevel=2,
            )
        registered.add(auto_module)


class RegisteringLoader(importlib.abc.Loader):
    """The real loader of a transformers Auto module, registering Magma once the module has run."""

    def __init__(self, loader: Any, module_name: str) -> None:
        self.loader = loader
        self.module_name = module_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        module.__spec__._initializing = False  # importlib clears it only after this returns
        register_available()

    def __getattr__(self, name: str) -> Any:  # resource readers and the like: the real loader's
        return getattr(self.loader, name)


class AutoModuleFinder(importlib.abc.MetaPathFinder):
    """Finds transformers' Auto modules through the other finders and wraps their loaders."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in REGISTRATIONS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = RegisteringLoader(spec.loader, fullname)
                return spec
        return None


def install() -> None:
    """Register now for the Auto modules already imported, and when the others are."""
    if not any(isinstance(finder, AutoModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, AutoModuleFinder())
    register_available()
