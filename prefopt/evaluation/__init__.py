"""Measurements of a trained policy: win rates, KL, length, sycophancy, reward hacking
(:mod:`.metrics`), capability retention (:mod:`.capability`) and statistics (:mod:`.stats`)."""
