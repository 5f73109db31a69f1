"""Imported by the verifier's fork server (``rewards.sandbox``) before it forks any worker: sympy, the LaTeX
parser and the equivalence module, so that a worker forked from the server -- the first ones and each
replacement of a worker killed for running past its timeout -- starts in milliseconds instead of spending a
second or more on imports of its own. ``rewards.preload_warm`` also trains the parser."""

import latex2sympy2_extended.latex2sympy2  # noqa: F401
import sympy  # noqa: F401

import rewards.equivalence  # noqa: F401
