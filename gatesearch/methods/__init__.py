"""Training methods, one file each, registered by name in ``METHODS``.

A method turns ``(batch, step)`` into a loss and its named parts; ``train.fit`` knows none of
them. The interface is ``methods.base.Method`` (read its docstring); a new method is a new
file plus one line here.
"""

from gatesearch.methods.adn import ADN
from gatesearch.methods.base import Method, StepResult
from gatesearch.methods.gated_depth import GatedDepth
from gatesearch.methods.plain import Plain
from gatesearch.methods.probgates import ProbGates
from gatesearch.methods.stochastic_depth import StochasticDepth
from gatesearch.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")
METHODS.add("plain", Plain)
METHODS.add("stochastic_depth", StochasticDepth)
METHODS.add("adn", ADN)
METHODS.add("gated_depth", GatedDepth)
METHODS.add("probgates", ProbGates)

__all__ = ["METHODS", "Method", "StepResult"]
