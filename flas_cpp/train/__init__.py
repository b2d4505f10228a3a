"""flas-train: train a FLAS flow for a base GGUF on this machine, from the base model alone
(PyTorch on the CPU; `pip install flas-cpp[train]`). The runtime itself never imports this."""

from .concepts import LANGUAGES, PROMPTS, Concept, load_concepts, load_prompts
from .recipe import Recipe

__all__ = ["Concept", "LANGUAGES", "PROMPTS", "Recipe", "load_concepts", "load_prompts", "train"]


def __getattr__(name: str):
    # train needs PyTorch: imported when asked for, so that flas-train can say what to install
    if name == "train":
        from .trainer import train

        return train
    raise AttributeError(name)
