"""Built-in objectives (installed as prefopt.algorithms)."""
