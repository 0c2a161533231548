"""PowerGate: prepaid energy metering, pay before use for electricity and water.

Layers (inner to outer): ``domain`` and ``protocols`` are pure; ``store`` persists; ``headend`` talks to
meters; ``services`` are the use cases; ``api``, ``web`` and ``cli`` are the edges. An inner layer never
imports an outer one (``tests/unit/test_layers.py`` keeps it so).
"""

__version__ = "0.1.0"
