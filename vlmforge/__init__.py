"""vlmforge: versioned, reproducible vision-language training and test data."""

__version__ = "0.1.1"

__all__ = ["__version__", "build", "open_build"]


def __getattr__(name: str):
    # Lazy, so that `import vlmforge` stays cheap for workers and the CLI's --help.
    if name in ("build", "open_build"):
        from vlmforge import api

        return getattr(api, name)
    raise AttributeError(name)
