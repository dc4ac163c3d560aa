"""so2nn: SO(2)-convolution (eSCN-style) equivariant building blocks and a reference EquiformerV2."""

from importlib import metadata as _metadata


def _version() -> str:
    """The installed distribution's version; the source tree's pyproject.toml where so2nn runs uninstalled."""
    try:
        return _metadata.version("so2nn")
    except _metadata.PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        match = re.search(r'(?m)^version\s*=\s*"([^"]+)"', pyproject.read_text()) if pyproject.is_file() else None
        return match.group(1) if match else "0+unknown"


__version__ = _version()

from . import so3  # noqa: E402

__all__ = ["so3", "__version__"]
