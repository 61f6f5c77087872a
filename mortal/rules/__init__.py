"""Learning rules: how weights change. Each works on any stack of tensor -> tensor layers."""
