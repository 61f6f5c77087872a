"""Architectures: stacks of layers, each a module mapping a tensor to a tensor.

A learning rule sees only that interface, so any architecture here can be trained by any rule.
"""
