"""Experiments that nninv's command line, explorer and benchmarks share.

``seed`` is the seed experiment of README: the MNIST classifier
``sigmoid(x W + b)`` (784 -> 10), its priors and the table of methods that
``nninv demo`` prints.
"""
