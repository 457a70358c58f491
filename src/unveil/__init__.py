"""unveil: self-supervised image representation learning by corruption."""

__version__ = "0.1.0"
