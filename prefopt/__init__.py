"""prefopt: preference optimization for language models.

The Python API (:mod:`prefopt.api`): ``prefopt.run(algo=..., data=..., **options)``, ``prefopt.list_algorithms()``
and the error every bad input raises, ``prefopt.PrefoptError``.
"""

from prefopt.errors import PrefoptError

__version__ = "0.1.0"
__all__ = ["PrefoptError", "__version__", "list_algorithms", "run"]


def __getattr__(name: str):
    if name in ("run", "list_algorithms"):  # imported on first use: `import prefopt` stays light (no torch)
        from prefopt import api

        return getattr(api, name)
    raise AttributeError(f"module 'prefopt' has no attribute {name!r}")
