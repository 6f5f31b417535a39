"""Learning between waves: the meta-optimizer, the agent tuner, the adaptive scheduler."""
