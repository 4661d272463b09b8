"""Training methods, one file each, registered by name in ``METHODS``.

A method turns ``(batch, step)`` into a loss and its named parts; ``train.fit`` knows none of them.
"""

from gatesearch.registry import Registry

METHODS: Registry = Registry("method")
