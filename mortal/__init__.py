"""mortal: neural networks that learn without end-to-end backpropagation."""

__version__ = "0.1.0"
